"""``compareToTruth``: one table of every truth galaxy against two deblenders' measurements (standalone).

Each truth galaxy (``truth_catalog`` of a simulated patch, `make_repo`) is matched one to one to the
objects of each deblender's ``object_unforced_measurement`` (nearest detection peak within
``matchRadius`` pixels, closest pairs first: `match_to_truth`).  The output, ``object_truth_comparison``,
has one row per truth galaxy: its truth (``truth_*``: position, per-band flux, shear) and, for each
deblender, prefixed by its label (``vae_``, ``scarlet_``), the matched object's id (0 when unmatched),
``matched``, per-band ``flux``, ``fluxErr``, ``modelFlux`` and ``fluxRelErr`` = flux / truth - 1, and
in ``shapeBand`` the HSM shear on the re-distributed pixels and on the model with ``dg`` = |g - g_true|.
"""

from __future__ import annotations

__all__ = ["TruthComparisonConnections", "TruthComparisonConfig", "TruthComparisonTask"]

import numpy as np
from astropy.table import Table
from lsst.pex.config import Field
from lsst.pipe.base import (InputQuantizedConnection, OutputQuantizedConnection, PipelineTask,
                            PipelineTaskConfig, PipelineTaskConnections, QuantumContext, Struct)
from lsst.pipe.base import connectionTypes as cT

from ...measure.matching import match_to_truth
from .detect_task import PATCH_DIMENSIONS


class TruthComparisonConnections(PipelineTaskConnections, dimensions=PATCH_DIMENSIONS):
    truth = cT.Input(doc="Truth galaxies of the patch.", name="truth_catalog", storageClass="ArrowAstropy",
                     dimensions=PATCH_DIMENSIONS)
    measurementA = cT.Input(doc="Measurement of the first deblender's objects.",
                            name="object_unforced_measurement_vae", storageClass="ArrowAstropy",
                            dimensions=PATCH_DIMENSIONS)
    measurementB = cT.Input(doc="Measurement of the second deblender's objects.",
                            name="object_unforced_measurement_scarlet", storageClass="ArrowAstropy",
                            dimensions=PATCH_DIMENSIONS)
    comparison = cT.Output(doc="Every truth galaxy with each deblender's matched measurement.",
                           name="object_truth_comparison", storageClass="ArrowAstropy",
                           dimensions=PATCH_DIMENSIONS)


class TruthComparisonConfig(PipelineTaskConfig, pipelineConnections=TruthComparisonConnections):
    labelA = Field[str](doc="Column prefix of the first deblender.", default="vae")
    labelB = Field[str](doc="Column prefix of the second deblender.", default="scarlet")
    matchRadius = Field[float](doc="Largest truth-to-peak distance of a match, pixels.", default=2.0)
    shapeBand = Field[str](doc="Band of the shapes compared (the measurement's shapeBand).", default="r")

    def validate(self) -> None:
        super().validate()
        if self.labelA == self.labelB:
            raise ValueError(f"labelA and labelB must differ, both are {self.labelA!r}.")


class TruthComparisonTask(PipelineTask):
    """Match the truth galaxies of a patch to two deblenders' objects and write one table."""

    ConfigClass = TruthComparisonConfig
    _DefaultName = "compareToTruth"
    config: TruthComparisonConfig

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:
        butlerQC.put(self.run(**butlerQC.get(inputRefs)), outputRefs)

    def run(self, truth: Table, measurementA: Table, measurementB: Table) -> Struct:
        """One row per truth galaxy with both deblenders' matched measurements.

        Parameters
        ----------
        truth : `astropy.table.Table`
            ``x``, ``y``, ``flux_{band}``, ``g1``, ``g2`` (patch pixels).
        measurementA, measurementB : `astropy.table.Table`
            ``object_unforced_measurement`` of each deblender.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``comparison`` (`astropy.table.Table`).
        """
        n = len(truth)
        table = Table()
        table["truth_row"] = np.arange(n, dtype=np.int64)
        table["truth_x"] = np.asarray(truth["x"], dtype=np.float64)
        table["truth_y"] = np.asarray(truth["y"], dtype=np.float64)
        bands = [c[len("flux_"):] for c in truth.colnames if c.startswith("flux_")]
        for band in bands:
            table[f"truth_flux_{band}"] = np.asarray(truth[f"flux_{band}"], dtype=np.float64)
        g_true = {name: np.asarray(truth[name], dtype=np.float64) if name in truth.colnames
                  else np.full(n, np.nan) for name in ("g1", "g2")}
        table["truth_g1"], table["truth_g2"] = g_true["g1"], g_true["g2"]
        sb = self.config.shapeBand
        for label, meas in ((self.config.labelA, measurementA), (self.config.labelB, measurementB)):
            # match_to_truth gives the truth row of each object; invert it to the object of each truth.
            index = match_to_truth(meas["deblend_peak_center_x"], meas["deblend_peak_center_y"],
                                   truth["x"], truth["y"], self.config.matchRadius)
            row = np.full(n, -1, dtype=np.int64)
            row[index[index >= 0]] = np.flatnonzero(index >= 0)
            ok = row >= 0

            def take(column: str, fill: float = np.nan) -> np.ndarray:
                out = np.full(n, fill, dtype=np.float64)
                if column in meas.colnames:
                    out[ok] = np.asarray(meas[column], dtype=np.float64)[row[ok]]
                return out

            table[f"{label}_matched"] = ok
            ids = np.zeros(n, dtype=np.int64)
            ids[ok] = np.asarray(meas["id"], dtype=np.int64)[row[ok]]
            table[f"{label}_id"] = ids
            for band in bands:
                flux = take(f"{band}_flux")
                table[f"{label}_{band}_flux"] = flux
                table[f"{label}_{band}_fluxErr"] = take(f"{band}_fluxErr")
                table[f"{label}_{band}_modelFlux"] = take(f"{band}_modelFlux")
                with np.errstate(invalid="ignore", divide="ignore"):
                    table[f"{label}_{band}_fluxRelErr"] = flux / table[f"truth_flux_{band}"] - 1.0
            for kind in ("hsm", "hsmModel"):
                g1, g2 = take(f"{sb}_{kind}_g1"), take(f"{sb}_{kind}_g2")
                table[f"{label}_{sb}_{kind}_g1"] = g1
                table[f"{label}_{sb}_{kind}_g2"] = g2
                table[f"{label}_{sb}_{kind}_dg"] = np.hypot(g1 - g_true["g1"], g2 - g_true["g2"])
        table.meta["labels"] = [self.config.labelA, self.config.labelB]
        table.meta["match_radius"] = self.config.matchRadius
        return Struct(comparison=table)
