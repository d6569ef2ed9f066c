"""Model weights: safetensors files with metadata, never pickle.

A training run writes one network (`save_model`); the shipped file bundles the VAE and the deblender
encoder (`save_bundle`), which share the VAE's decoder.  A refiner (`model.refiner`) is trained on one
bundle's decoder and written beside it (`save_refiner`: ``NAME.refiner.safetensors`` beside
``NAME.safetensors``), with that bundle's ``sha256``: it is loaded only with the bundle it was trained
for.  Metadata (all strings): ``kind``, ``bands``, ``stamp_size``, ``network`` (the `NetworkConfig`),
``normalization``, ``likelihood``, ``data_config`` (the `BlendConfig` of the training data), ``sha256``
(of the tensors), plus free entries such as the training command and the data seed.  Loading checks the
bands, stamp size and normalisation against what the caller asks for and fails with a clear message when
they differ.
"""

from __future__ import annotations

__all__ = ["save_model", "load_model", "save_bundle", "load_bundle", "shipped_weights_path",
           "WeightsMismatchError", "read_metadata", "trained_over", "save_refiner", "load_refiner",
           "refiner_path"]

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .networks import VAE, Deblender, NetworkConfig
from .normalization import Normalization
from .refiner import Refiner, RefinerConfig

FORMAT_VERSION = "1"
_WEIGHTS_DIR = Path(__file__).resolve().parents[6] / "weights"


class WeightsMismatchError(ValueError):
    """Weights were made for other bands, stamp size or normalisation than asked for."""


def shipped_weights_path(name: str) -> Path:
    """Path of shipped weights by name (``lsst`` -> ``weights/lsst.safetensors``) or a file path."""
    path = Path(name)
    if path.suffix == ".safetensors" or path.exists():
        return path
    candidates = [_WEIGHTS_DIR / f"{name}.safetensors",
                  Path(__file__).resolve().parent.parent / "data" / f"{name}.safetensors"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"No shipped weights named {name!r} (looked in {[str(c) for c in candidates]}).")


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trained_over(data_config) -> dict:
    """What a network trained on blends of ``data_config`` (a `sim.blend.BlendConfig`) has seen in its
    reference band: the PSF FWHM range in pixels and the noise variance range per pixel."""
    from ..sim.conditions import FULL_DEPTH_YEARS

    survey = data_config.get_survey()
    band = survey.band(data_config.reference_band)
    fwhm = data_config.psf_fwhm_range or (band.psf_fwhm, band.psf_fwhm)
    variance = sorted(band.noise_sigma**2 * FULL_DEPTH_YEARS / y for y in data_config.years)
    return {"reference_band": data_config.reference_band,
            "psf_fwhm_pixels": [fwhm[0] / band.pixel_scale, fwhm[1] / band.pixel_scale],
            "variance": [float(v) for v in variance]}


def _metadata(config: NetworkConfig, norm: Normalization, kind: str, likelihood: str, data_config,
              extra: dict | None) -> dict[str, str]:
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "bands": json.dumps(list(config.bands)),
            "stamp_size": str(config.stamp_size), "network": json.dumps(dataclasses.asdict(config)),
            "normalization": norm.to_json(), "likelihood": likelihood,
            "data_config": json.dumps(dataclasses.asdict(data_config)) if data_config is not None else "",
            "trained_over": json.dumps(trained_over(data_config)) if data_config is not None else ""}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta["sha256"] = _digest(tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def save_model(path: str | Path, model: VAE | Deblender, norm: Normalization, kind: str,
               likelihood: str = "normalized", data_config=None, extra: dict | None = None) -> Path:
    """Write one network (``kind`` ``vae`` or ``deblender``) with its metadata."""
    return _save(Path(path), dict(model.state_dict()),
                 _metadata(model.config, norm, kind, likelihood, data_config, extra))


def save_bundle(path: str | Path, vae: VAE, deblender: Deblender, norm: Normalization, likelihood: str,
                data_config=None, extra: dict | None = None) -> Path:
    """Write the shipped file: the VAE and the deblender's encoder (the decoder is the VAE's)."""
    tensors = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    tensors.update({f"deblender.encoder.{k}": v for k, v in deblender.encoder.state_dict().items()})
    return _save(Path(path), tensors, _metadata(vae.config, norm, "bundle", likelihood, data_config, extra))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a weights file."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _check(meta: dict[str, str], path: Path, bands, stamp_size, normalization) -> None:
    have_bands = tuple(json.loads(meta["bands"]))
    problems = []
    if bands is not None and tuple(bands) != have_bands:
        problems.append(f"bands {have_bands}, asked for {tuple(bands)}")
    if stamp_size is not None and int(stamp_size) != int(meta["stamp_size"]):
        problems.append(f"stamp size {meta['stamp_size']}, asked for {stamp_size}")
    if normalization is not None and Normalization.from_json(meta["normalization"]) != normalization:
        problems.append(f"normalisation {meta['normalization']}, asked for {normalization.to_json()}")
    if problems:
        raise WeightsMismatchError(f"Weights {path} were made for " + "; ".join(problems) + ".")


def _load(path: Path, device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        meta = read_metadata(path)
        tensors = load_file(str(path), device="cpu") if meta.get("format_version") == FORMAT_VERSION else {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"{path} cannot be read as a safetensors weights file (truncated, or not one): "
                         f"{error}") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a meas_extensions_vae weights file "
                         f"(format {meta.get('format_version')}).")
    if _digest(tensors) != meta.get("sha256"):
        raise ValueError(f"{path}: tensors do not match their sha256: the file is corrupt.")
    return {k: v.to(device) for k, v in tensors.items()}, meta


def load_model(path: str | Path, kind: str, bands=None, stamp_size=None, normalization=None,
               device: str | torch.device = "cpu") -> tuple[VAE | Deblender, Normalization, dict[str, str]]:
    """Load one network written by `save_model`, checking bands, stamp size and normalisation."""
    path = Path(path)
    tensors, meta = _load(path, device)
    if meta["kind"] != kind:
        raise ValueError(f"{path} holds a {meta['kind']!r}, not a {kind!r}.")
    _check(meta, path, bands, stamp_size, normalization)
    config = _network_config(meta)
    model = VAE(config) if kind == "vae" else Deblender(config)
    model.load_state_dict(tensors)
    return model.to(device).eval(), Normalization.from_json(meta["normalization"]), meta


def _network_config(meta: dict[str, str]) -> NetworkConfig:
    values = json.loads(meta["network"])
    return NetworkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_bundle(name: str | Path = "lsst", bands=None, stamp_size=None, normalization=None,
                device: str | torch.device = "cpu") -> tuple[VAE, Deblender, Normalization, dict[str, str]]:
    """Load shipped weights (by name or path): the VAE, the deblender, the normalisation, the metadata."""
    path = shipped_weights_path(str(name))
    tensors, meta = _load(path, device)
    if meta["kind"] != "bundle":
        raise ValueError(f"{path} holds a {meta['kind']!r}, not a shipped bundle.")
    _check(meta, path, bands, stamp_size, normalization)
    config = _network_config(meta)
    vae = VAE(config)
    vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
    deblender = Deblender(config)
    deblender.decoder.load_state_dict(vae.decoder.state_dict())
    deblender.encoder.load_state_dict({k[18:]: v for k, v in tensors.items()
                                       if k.startswith("deblender.encoder.")})
    norm = Normalization.from_json(meta["normalization"])
    return vae.to(device).eval(), deblender.to(device).eval(), norm, meta


def refiner_path(bundle: str | Path) -> Path:
    """Where the refiner of a bundle lives: ``NAME.refiner.safetensors`` beside ``NAME.safetensors``."""
    path = shipped_weights_path(str(bundle))
    return path.with_name(path.name.removesuffix(".safetensors") + ".refiner.safetensors")


def save_refiner(path: str | Path, refiner: Refiner, bundle_meta: dict[str, str], extra: dict | None = None
                 ) -> Path:
    """Write a refiner trained on the bundle whose metadata is ``bundle_meta`` (its bands, stamp size,
    normalisation and ``sha256`` are recorded)."""
    meta = {"format_version": FORMAT_VERSION, "kind": "refiner", "bands": bundle_meta["bands"],
            "stamp_size": bundle_meta["stamp_size"], "normalization": bundle_meta["normalization"],
            "refiner": json.dumps(dataclasses.asdict(refiner.config)), "bundle_sha256": bundle_meta["sha256"]}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return _save(Path(path), dict(refiner.state_dict()), meta)


def load_refiner(path: str | Path, bundle_meta: dict[str, str], device: str | torch.device = "cpu"
                 ) -> tuple[Refiner, dict[str, str]]:
    """Load a refiner written by `save_refiner`, checking that it was trained on the bundle whose metadata
    is ``bundle_meta`` (`WeightsMismatchError` if not)."""
    path = Path(path)
    tensors, meta = _load(path, device)
    if meta["kind"] != "refiner":
        raise ValueError(f"{path} holds a {meta['kind']!r}, not a refiner.")
    if meta.get("bundle_sha256") != bundle_meta.get("sha256"):
        trained, given = meta.get("bundle_sha256", "")[:12], bundle_meta.get("sha256", "")[:12]
        raise WeightsMismatchError(f"The refiner {path} was trained on other weights (sha256 {trained}, "
                                   f"these {given}).")
    values = json.loads(meta["refiner"])
    config = RefinerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    refiner = Refiner(config)
    refiner.load_state_dict(tensors)
    return refiner.to(device).eval(), meta
