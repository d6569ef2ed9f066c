"""Training the VAE (isolated galaxies) and then the deblender (blends -> central galaxy's code).

Both read blend shards (`sim.dataset`): the VAE learns the noiseless central galaxies of the blends, seen
through fresh noise every time; the deblender sees the whole blend with fresh noise plus a map of the
other detected peaks, and is trained to reproduce the central galaxy alone through the VAE's frozen
decoder.  Training is resumable: every epoch ends with an atomic checkpoint; ``resume=True`` continues
from it.  The best epoch (validation loss) is kept; training stops early when validation stops improving
or when the time budget is spent.

A kill at any moment leaves files that load and agree with each other: every file is written to a
temporary name and moved into place (`os.replace`), and the checkpoint is the commit point of an epoch: a
better model is written beside ``best.safetensors`` first and moved onto it only once the checkpoint that
records it is in place (`_settle_best` finishes or discards that step when a run starts).  A resumed run
that was stopped (patience, time budget) stays stopped unless those limits are raised, as the
uninterrupted run would have.

Likelihoods (``likelihood``):

- ``gaussian``: per-pixel Gaussian in electrons with the known noise variance (debvader);
- ``normalized``: unit-variance Gaussian on normalised images (the noise of an asinh(x / sigma) image is
  ~1 at low flux, compressed at high flux);
- ``bce``: the paper's binary cross-entropy on ``paper``-normalised images mapped to [0, 1].
"""

from __future__ import annotations

__all__ = ["TrainConfig", "train", "default_device", "reconstruction_loss", "flux_loss", "kl_divergence"]

import dataclasses
import json
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..sim.dataset import BlendDataset
from .networks import PRESETS, VAE, Deblender, NetworkConfig, neighbour_maps
from .normalization import Normalization

LIKELIHOODS = ("gaussian", "normalized", "bce")


@dataclasses.dataclass
class TrainConfig:
    """Options of one training run.

    Attributes
    ----------
    kind : `str`
        ``vae`` or ``deblender``.
    train_dir : `str` or `list` [`str`]
        Folder(s) of training blend shards.
    val_dir : `str`
        Folder of validation blend shards.
    out_dir : `str`
        Where checkpoints, weights, curves and the log go.
    preset : `str`
        Network preset (`networks.PRESETS`).
    likelihood : `str`
        One of `LIKELIHOODS`.
    normalization : `str`
        ``asinh`` or ``paper``.
    kl_weight : `float`
        Weight of the KL term.
    batch_size, lr : `int`, `float`
    epoch_size : `int`
        Samples per epoch (validation after each).
    max_epochs, patience : `int`
        Epoch limit; stop after ``patience`` epochs without a better validation loss.
    max_minutes : `float`
        Wall-clock budget of this run.
    seed : `int`
    vae_weights : `str`
        For the deblender: the VAE checkpoint folder (its ``best.safetensors``).
    init_encoder : `str`
        For the deblender: a trained deblender's ``.safetensors`` whose encoder is the starting point
        (fine-tuning after the VAE was trained further); empty: the VAE's encoder.
    neighbour_drop : `float`
        Probability to hide each neighbour peak from the neighbour map (detection incompleteness);
        neighbours with SNR < 5 are always hidden.
    bf16 : `bool`
        bfloat16 autocast on CPUs that compute it in hardware (weights and loss stay float32).
    conditioned : `bool`
        Train the PSF- and noise-aware networks of model v3 (`networks.NetworkConfig.conditioned`; needs
        the ``asinh`` normalisation): each stamp's PSF and variance from its shard are inputs.
    augment : `bool`
        Rotate each training stamp by a random multiple of 90 degrees and flip it at random (with its
        target, PSF and neighbour map): the sky has no preferred orientation.
    neighbour_jitter : `float`
        Standard deviation (pixels) of the noise added to the neighbour peaks' positions in the
        neighbour map (detected peaks are not exact).
    colour_jitter : `float`
        Standard deviation (magnitudes) of a random factor on each band of the central galaxy, and another
        on each band of the rest of the blend, the reference band left alone: colours beyond those of the
        simulator's four templates (the CatSim galaxies reach g - r = -0.24, the templates 0.1).
    amplitude_reference : `float`
        For a conditioned VAE: stamps whose core flux exceeds this (`Normalization.stamp_factors`) are
        divided down to it, with their noise, and the models multiplied back (0: off).  The deblender
        takes its VAE's.
    clip_grad_norm : `float`
        If > 0, the gradient's norm is clipped to this before each step (the conditioned decoder's
        sinh output can give rare, huge gradients).
    flux_weight : `float`
        Weight of `flux_loss` beside the likelihood (0: none): the ``normalized`` likelihood, compressed by
        asinh, leaves noisy galaxies' models faint on average; the flux term is linear in electrons.
    flux_huber : `float`
        If > 0, the flux term's pseudo-Huber scale in flux errors (`flux_loss`): bounded gradients, for
        the deblender, whose early models of faint galaxies hold their neighbours' light.
    init_from : `str`
        A bundle (``vae-deblend bundle``'s file, e.g. a candidate in ``weights/candidates``) to start from:
        its VAE (kind ``vae``) or its deblender's encoder (kind ``deblender``), with a fresh optimiser; for
        continuing a training whose checkpoint is gone.  The network and normalisation must be those asked
        for.
    """

    kind: str = "vae"
    train_dir: str | list[str] = "runs/train"
    val_dir: str = "runs/val"
    out_dir: str = "runs/vae"
    preset: str = "small"
    likelihood: str = "normalized"
    normalization: str = "asinh"
    kl_weight: float = 0.01
    batch_size: int = 64
    lr: float = 3e-4
    epoch_size: int = 20000
    max_epochs: int = 100
    patience: int = 4
    max_minutes: float = 60.0
    seed: int = 0
    vae_weights: str = ""
    init_encoder: str = ""
    neighbour_drop: float = 0.1
    bf16: bool = True
    conditioned: bool = False
    augment: bool = False
    neighbour_jitter: float = 0.0
    colour_jitter: float = 0.0
    amplitude_reference: float = 0.0
    clip_grad_norm: float = 0.0
    flux_weight: float = 0.0
    flux_huber: float = 0.0
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("vae", "deblender"):
            raise ValueError(f"kind must be 'vae' or 'deblender', got {self.kind!r}.")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}.")
        if self.likelihood == "bce" and self.normalization != "paper":
            raise ValueError("The bce likelihood needs the 'paper' normalization (images in [-1, 1]).")
        if self.kind == "deblender" and not self.vae_weights:
            raise ValueError("Training the deblender needs vae_weights (a trained VAE).")
        if self.init_encoder and self.kind != "deblender":
            raise ValueError("init_encoder is for the deblender.")
        if self.conditioned and self.normalization != "asinh":
            raise ValueError("The conditioned (PSF-aware) networks need the 'asinh' normalization.")
        if self.amplitude_reference and not (self.conditioned and self.kind == "vae"):
            raise ValueError("amplitude_reference is for a conditioned VAE (the network must be told the "
                             "noise of a divided-down stamp); the deblender takes its VAE's.")


def _fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it,
    about 10 times slower than float32 (measured on an AVX2 EPYC, docs/model.md)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, variance: torch.Tensor,
                        norm: Normalization, likelihood: str) -> torch.Tensor:
    """Negative log-likelihood per stamp (summed over pixels and bands), averaged over the batch.

    Parameters
    ----------
    output : `torch.Tensor`, (batch, bands, h, w)
        Network output, normalised units.
    target : `torch.Tensor`, (batch, bands, h, w)
        Noiseless target image, electrons.
    variance : `torch.Tensor`, (batch, bands)
        Noise variance per pixel, electrons^2.
    """
    if likelihood == "gaussian":
        # Bounded so that an untrained network cannot overflow sinh (12 is ~80,000 sigma).
        chi = (norm.inverse(output.clamp(-12.0, 12.0)) - target) ** 2 / variance[:, :, None, None]
        return 0.5 * chi.sum(dim=(1, 2, 3)).mean()
    y = norm.forward(target)
    if likelihood == "normalized":
        return 0.5 * ((output - y) ** 2).sum(dim=(1, 2, 3)).mean()
    return torch.nn.functional.binary_cross_entropy_with_logits(
        output, (y + 1) / 2, reduction="none").sum(dim=(1, 2, 3)).mean()


# Relative floor of a stamp flux's error in `flux_loss`: bright galaxies' fluxes are asked to 2 %, not to
# their photon noise (which would let them dominate every batch).
FLUX_LOSS_FLOOR = 0.02


def flux_loss(output: torch.Tensor, target: torch.Tensor, variance: torch.Tensor, norm: Normalization,
              huber: float = 0.0) -> torch.Tensor:
    """Half the chi^2 of each band's model flux over the stamp against the target's, per stamp (summed over
    bands), averaged over the batch; with ``huber``, its pseudo-Huber form.

    The error of a band's flux is the stamp's noise (pixels x variance) plus `FLUX_LOSS_FLOOR` of the
    target's flux, in quadrature.  A likelihood on asinh-compressed images is minimised, for a noisy input,
    by the mean of the compressed image, whose flux is below the mean flux (asinh is concave for positive
    values): its models of faint galaxies come out faint on average.  This term is linear in electrons.
    A deblender starts out with a bright neighbour's light in a faint galaxy's model: chi's of thousands,
    whose squares swamp the likelihood; the pseudo-Huber form ``huber^2 (sqrt(1 + (chi / huber)^2) - 1)``
    is the same near zero and grows only linearly beyond ``huber``, its gradient bounded by ``huber``.

    Parameters
    ----------
    output : `torch.Tensor`, (batch, bands, h, w)
        Network output, normalised units.
    target : `torch.Tensor`, (batch, bands, h, w)
        Noiseless target image, electrons.
    variance : `torch.Tensor`, (batch, bands)
        Noise variance per pixel, electrons^2.
    norm : `Normalization`
        The network's normalisation (``output`` back to electrons).
    huber : `float`
        Scale (in flux errors) beyond which the term grows linearly; 0: the plain chi^2.
    """
    return model_flux_loss(norm.inverse(output.clamp(-12.0, 12.0)), target, variance, huber)


def model_flux_loss(model: torch.Tensor, target: torch.Tensor, variance: torch.Tensor, huber: float = 0.0,
                    per_stamp: bool = False) -> torch.Tensor:
    """`flux_loss` of models in electrons (batch, bands, h, w); with ``per_stamp``, each stamp's (batch,)."""
    model = model.sum(dim=(2, 3))
    truth = target.sum(dim=(2, 3))
    pixels = target.shape[-1] * target.shape[-2]
    error2 = pixels * variance + (FLUX_LOSS_FLOOR * truth) ** 2
    chi2 = (model - truth) ** 2 / error2
    if huber > 0:
        loss = (huber**2 * (torch.sqrt(1 + chi2 / huber**2) - 1)).sum(dim=1)
    else:
        loss = 0.5 * chi2.sum(dim=1)
    return loss if per_stamp else loss.mean()


def network_output(raw: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Normalised image from the decoder's raw output (the bce decoder predicts logits)."""
    return 2 * torch.sigmoid(raw) - 1 if likelihood == "bce" else raw


def kl_divergence(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) per stamp, averaged over the batch."""
    return 0.5 * (mean**2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(dim=1).mean()


def _prefetch(iterator: Iterator, depth: int = 3) -> Iterator:
    """Read batches in a thread while the network trains."""
    q: queue.Queue = queue.Queue(depth)
    done = object()

    def work() -> None:
        for item in iterator:
            q.put(item)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        yield item


class _Batches:
    """Endless shuffled batches with fresh noise, as tensors."""

    def __init__(self, data: BlendDataset, config: TrainConfig, seed: int) -> None:
        self.data, self.config, self.seed = data, config, seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        rng = np.random.default_rng([self.seed, 99])
        size = self.data.image_shape[-1]
        reference = _reference_band(self.data)
        while True:
            for batch in self.data.iter_batches(self.config.batch_size, seed=self.seed * 1000 + epoch,
                                                drop_last=True):
                yield _prepare(batch, self.config, rng, size, reference)
            epoch += 1


def _reference_band(data: BlendDataset) -> int:
    """Index of the data's reference band (that of its truth shapes, r for LSST)."""
    band = data.config.reference_band
    return list(data.bands).index(band) if band in data.bands else 0


def _dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``array`` (..., h, w) rotated by ``k`` quarter turns, then flipped left-right if ``flip``."""
    out = np.rot90(array, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def _prepare(batch: dict, config: TrainConfig, rng: np.random.Generator, size: int, reference: int = 0
             ) -> dict:
    """One batch as tensors: fresh noise, the augmentations of ``config``; ``reference`` is the index
    of the band whose flux the colour jitter leaves alone."""
    sigma = np.sqrt(batch["variance"])[:, :, None, None]
    clean = batch["central"] if config.kind == "vae" else batch["noiseless"]
    target = batch["central"]
    if config.colour_jitter > 0:
        sigma = 0.4 * math.log(10) * config.colour_jitter
        factors = np.exp(rng.normal(0.0, sigma, (2,) + batch["variance"].shape))
        factors[:, :, reference] = 1.0
        factors = factors.astype(np.float32)[..., None, None]
        rest = clean - target
        target = target * factors[0]
        clean = target + rest * factors[1] if config.kind == "deblender" else target
    psf = batch["psf"]
    maps = None
    if config.kind == "deblender":
        peaks = batch["neighbours"].copy()
        hidden = (peaks[..., 2] < 5.0) | (rng.random(peaks.shape[:2]) < config.neighbour_drop)
        peaks[hidden] = np.nan
        if config.neighbour_jitter > 0:
            peaks[..., :2] += rng.normal(0.0, config.neighbour_jitter, peaks[..., :2].shape)
        maps = neighbour_maps(peaks[..., :2], size)
    if config.augment:
        # The same random rotation and flip for a stamp, its target, PSF and neighbour map.
        turns = rng.integers(0, 4, len(clean))
        flips = rng.random(len(clean)) < 0.5
        arrays = [clean, target, psf] + ([maps] if maps is not None else [])
        for j, array in enumerate(arrays):
            arrays[j] = np.stack([_dihedral(a, int(k), bool(f)) for a, k, f in zip(array, turns, flips)])
        clean, target, psf = arrays[:3]
        if maps is not None:
            maps = arrays[3]
    noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    out = {"input": torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.float32)),
           "target": torch.from_numpy(np.ascontiguousarray(target)),
           "variance": torch.from_numpy(batch["variance"]),
           "psf": torch.from_numpy(np.ascontiguousarray(psf, dtype=np.float32))}
    if maps is not None:
        out["neighbours"] = torch.from_numpy(np.ascontiguousarray(maps))
    return out


def _validation_batches(data: BlendDataset, config: TrainConfig, n_max: int = 2000) -> list[dict]:
    rng = np.random.default_rng(12345)  # the same noise every epoch: comparable losses
    size = data.image_shape[-1]
    batches, n = [], 0
    for batch in data.iter_batches(256, seed=0, shuffle=False):
        batches.append(_prepare(batch, config, rng, size, _reference_band(data)))
        n += len(batch["image"])
        if n >= n_max:
            break
    return batches


def _same_network(path: str, config: NetworkConfig, norm: Normalization, wanted: NetworkConfig,
                  wanted_norm: Normalization) -> None:
    """Raise unless weights from ``path`` have the network and normalisation a run asks for."""
    if config != wanted or norm != wanted_norm:
        raise ValueError(f"{path} was trained for another network or normalisation ({config}, {norm}) than "
                         f"{wanted}, {wanted_norm}.")


def _mean_max_pixel(data: BlendDataset) -> np.ndarray:
    batch = next(data.iter_batches(2000, seed=0, shuffle=False))
    return batch["central"].max(axis=(2, 3)).mean(axis=0)


BEST = "best.safetensors"
# A better model waits here until the checkpoint that records it is written (see `_settle_best`).
PENDING_BEST = "best.pending.safetensors"


def _atomic_torch_save(obj: dict, path: Path) -> None:
    """`torch.save` to a temporary file, flushed to disk, then moved onto ``path``.

    A kill (or a crash of the machine) during the write leaves the previous ``path`` whole.
    """
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    """Write ``text`` to a temporary file, then move it onto ``path`` (a reader never sees half)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _settle_best(out: Path, state: dict) -> None:
    """Finish or undo the last epoch's update of ``best.safetensors`` after a kill.

    ``PENDING_BEST`` exists only between writing a better model and moving it onto ``BEST``; if the
    checkpoint (``state``) records that model's epoch as the best, the epoch was committed and the move is
    finished; otherwise the epoch is lost (it will be trained again) and so is its model.

    Parameters
    ----------
    out : `pathlib.Path`
        The run's folder.
    state : `dict`
        The training state of the checkpoint the run starts from (``best_epoch``; absent in fresh runs
        and in checkpoints of earlier versions).
    """
    from .weights import read_metadata

    pending = out / PENDING_BEST
    if not pending.exists():
        return
    best_epoch = state.get("best_epoch")
    if best_epoch is not None and read_metadata(pending).get("epoch") == str(best_epoch):
        os.replace(pending, out / BEST)
    else:
        pending.unlink()


def _finished(state: dict, config: TrainConfig) -> bool:
    """Whether training stops here: epoch limit, ``patience`` epochs without improvement or budget spent.

    Patience and budget count only once an epoch is done (a run trains at least one epoch, as it always
    did, even with ``patience`` 0).
    """
    if state["epoch"] >= config.max_epochs:
        return True
    return state["epoch"] > 0 and (state["bad_epochs"] >= config.patience
                                   or state["seconds"] > 60 * config.max_minutes)


def _write_history(state: dict, out: Path, config: TrainConfig) -> None:
    """``history.json`` and ``loss_curves.png`` of the epochs in ``state``, each replaced atomically."""
    _plot_curves(state["history"], out / "loss_curves.png", f"{config.kind} ({config.preset})")
    _atomic_write_text(json.dumps(state["history"], indent=1) + "\n", out / "history.json")


def _plot_curves(history: list[dict], path: Path, title: str, ylabel: str = "loss per stamp (recon + KL)"
                 ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(path.suffix + ".tmp")
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    os.replace(tmp, path)


def train(config: TrainConfig, resume: bool = False, command: str = "", progress: bool = True) -> dict:
    """Train a VAE or a deblender; returns the run summary (also written to ``out_dir/summary.json``).

    The best model is written to ``out_dir/best.safetensors`` (see `weights.save_model`).  With
    ``resume``, training continues from ``out_dir/checkpoint.pt`` (if there is one): epochs, history,
    optimiser and scheduler; a run that had stopped trains on only if ``config`` allows more epochs.
    """
    from .weights import load_bundle, load_model, save_model

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = default_device()
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    bf16 = config.bf16 and device.type == "cpu" and _fast_bf16()
    train_data = BlendDataset(config.train_dir)
    val_data = BlendDataset(config.val_dir)
    size = train_data.image_shape[-1]
    net_config = NetworkConfig(bands=tuple(train_data.bands), stamp_size=size, conditioned=config.conditioned,
                               **PRESETS[config.preset])
    data_config = train_data.config

    if config.kind == "vae":
        if config.normalization == "asinh" and config.conditioned:
            # The full-depth noise: the blends' own noise varies with their depth.
            norm = Normalization.asinh(data_config.get_survey().noise_sigma,
                                       amplitude_reference=config.amplitude_reference)
        elif config.normalization == "asinh":
            norm = Normalization.asinh(np.sqrt(train_data.read(0, 1, truth=False)["variance"][0]))
        else:
            norm = Normalization.paper(_mean_max_pixel(train_data))
        model: torch.nn.Module = VAE(net_config)
        if net_config.conditioned:
            model.set_scales(norm.scales)
        if config.init_from:
            start, _, start_norm, _ = load_bundle(config.init_from)
            _same_network(config.init_from, start.config, start_norm, net_config, norm)
            model.load_state_dict(start.state_dict())
    else:
        vae, norm, _ = load_model(Path(config.vae_weights) / "best.safetensors", kind="vae")
        if vae.config != net_config:
            raise ValueError(f"The VAE's network {vae.config} differs from the requested {net_config}.")
        model = Deblender(net_config)
        model.init_from_vae(vae)
        if config.init_encoder:
            previous, previous_norm, _ = load_model(config.init_encoder, kind="deblender")
            if previous.config != net_config or previous_norm != norm:
                raise ValueError(f"{config.init_encoder} was trained for another network or normalisation "
                                 f"({previous.config}, {previous_norm}) than {net_config}, {norm}.")
            model.encoder.load_state_dict(previous.encoder.state_dict())
        if config.init_from:
            _, start, start_norm, _ = load_bundle(config.init_from)
            _same_network(config.init_from, start.config, start_norm, net_config, norm)
            model.encoder.load_state_dict(start.encoder.state_dict())
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)

    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "seconds": 0.0}
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = json.loads(saved["state"])
        torch.set_rng_state(saved["torch_rng"])
    _settle_best(out, state if resume else {})
    if resume and state["history"]:
        # A kill after the checkpoint may have lost the last update of these; they must describe it.
        _write_history(state, out, config)
        if _finished(state, config):
            print(f"{config.kind}: the checkpoint's run stopped at epoch {state['epoch']} "
                  f"({state['bad_epochs']} epochs without improvement, {state['seconds'] / 60:.1f} min); "
                  "raise max_epochs, patience or max_minutes to train on", flush=True)

    val_batches = _validation_batches(val_data, config)
    batches = _prefetch(iter(_Batches(train_data, config, config.seed + 7919 * state["epoch"])))
    start = time.perf_counter() - state["seconds"]
    steps_per_epoch = max(1, config.epoch_size // config.batch_size)

    def run(batch: dict, train_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["input"].to(device)
        # Bright stamps divided down to the reference brightness, their noise and target with them.
        factors = norm.stamp_factors(x)
        x = (x / factors[:, None, None, None]).contiguous(memory_format=torch.channels_last)
        target = batch["target"].to(device) / factors[:, None, None, None]
        variance = batch["variance"].to(device) / factors[:, None] ** 2
        conditions = {"psf": batch["psf"].to(device), "variance": variance} if config.conditioned else {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if config.kind == "vae":
                raw, mean, log_std = model(norm.forward(x), sample=train_mode, **conditions)
            else:
                raw, mean, log_std = model(norm.forward(x), batch["neighbours"].to(device), **conditions)
        raw = raw.float()
        recon = reconstruction_loss(raw, target, variance, norm, config.likelihood)
        if config.flux_weight > 0:
            recon = recon + config.flux_weight * flux_loss(network_output(raw, config.likelihood), target,
                                                           variance, norm, huber=config.flux_huber)
        kl = kl_divergence(mean.float(), log_std.float())
        return recon, kl

    if "initial_val_loss" not in state:
        model.eval()
        with torch.no_grad():
            val = [run(b, False) for b in val_batches]
        state["initial_val_loss"] = float(np.mean([float(r) + config.kl_weight * float(k) for r, k in val]))

    # Checked before each epoch, not only after one: a run resumed from the checkpoint of its last epoch
    # (killed before it could write its summary) must stop where the uninterrupted run stopped.
    while not _finished(state, config):
        model.train()
        totals = []
        bar = tqdm(range(steps_per_epoch), desc=f"{config.kind} epoch {state['epoch'] + 1}", unit="batch",
                   disable=not progress, leave=False)
        for _ in bar:
            recon, kl = run(next(batches), True)
            loss = recon + config.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            totals.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(totals[-50:]):.1f}")
        model.eval()
        with torch.no_grad():
            val = [run(b, False) for b in val_batches]
        val_recon = float(np.mean([float(r) for r, _ in val]))
        val_loss = val_recon + config.kl_weight * float(np.mean([float(k) for _, k in val]))
        scheduler.step(val_loss)
        state["epoch"] += 1
        state["seconds"] = time.perf_counter() - start
        state["history"].append({"epoch": state["epoch"], "train_loss": float(np.mean(totals)),
                                 "val_loss": val_loss, "val_recon": val_recon,
                                 "lr": optimizer.param_groups[0]["lr"], "minutes": state["seconds"] / 60})
        improved = val_loss < state["best_val"]
        if improved:
            state["best_val"], state["bad_epochs"], state["best_epoch"] = val_loss, 0, state["epoch"]
            # Not onto best.safetensors yet: a kill before the checkpoint below would leave a best model
            # of an epoch that the resumed run trains again (and that its history does not hold).
            save_model(out / PENDING_BEST, model, norm, kind=config.kind, likelihood=config.likelihood,
                       data_config=data_config,
                       extra={"training_command": command,
                              "train_config": json.dumps(dataclasses.asdict(config)),
                              "epoch": str(state["epoch"]), "val_loss": f"{val_loss:.4f}"})
        else:
            state["bad_epochs"] += 1
        _atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "state": json.dumps(state),
                            "torch_rng": torch.get_rng_state()}, checkpoint)
        _settle_best(out, state)
        _write_history(state, out, config)
        print(f"{config.kind} epoch {state['epoch']}: train {np.mean(totals):.2f} val {val_loss:.2f}"
              f"{' (best)' if improved else ''}, {state['seconds'] / 60:.1f} min", flush=True)

    summary = {"kind": config.kind, "epochs": state["epoch"], "best_val_loss": state["best_val"],
               "initial_val_loss": state["initial_val_loss"],
               "minutes": round(state["seconds"] / 60, 2), "device": str(device), "bf16": bf16,
               "samples_seen": state["epoch"] * steps_per_epoch * config.batch_size,
               "config": dataclasses.asdict(config), "command": command}
    _atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    return summary
