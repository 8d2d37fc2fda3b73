"""Brain tissues named by the text prompts: which tissue a class is, and which grey levels are
that tissue's.

The organisers send a text per class at iteration 0 ("Gray matter in brain MRI"; the contract
lets an entry ignore it). Twins of one brain box (grey matter, white matter, CSF; a hemisphere's
cortex and white matter) get the same probabilities from a per-class network and about the same
box, so before the first click nothing else tells them apart. A three-tissue model of the box's
grey levels does, without knowing the contrast: grey matter lies between white matter and CSF
in T1 and T2 alike, and of the two others CSF is the smaller part of a brain. It is refused only
when its components sit on one tissue (neighbours less than SEPARATION pooled SDs apart). A
stricter gate (1.25) kept it off most procedural brains, whose tissues overlap (d' 1-2; the
ICBM152 template's 3), and there a hemisphere's cortex lost the fusion to its twin white
matter outright (aseg brain 3: cortex DSC 0.04 at round 0, 0.14 after five clicks): a noisy
model beats none.
"""

from __future__ import annotations

import numpy as np

from app.prior import BINS, LLR_CLIP

GREY, WHITE, CSF = "grey", "white", "csf"
# (tissue, words) checked in order: "cortical white matter" is white, "ventricle" is CSF
WORDS = ((CSF, ("cerebrospinal", "csf", "ventricle")), (WHITE, ("white matter",)),
         (GREY, ("gray matter", "grey matter", "cortex", "cortical", "gyrus")))
# "cortex" of other organs, deep nuclei, and lesions named by their tissue ("White matter
# hyperintensities", the challenge's WMH task: a lesion is not its tissue's intensity)
NOT_BRAIN = ("subcortical", "renal", "adrenal", "kidney", "bone", "hyperintens", "lesion", "tumo", "infarct",
             "stroke", "edema", "oedema", "metasta")
BRAIN_WORDS = ("brain", "cerebr", "cortex", "matter", "gyrus", "ventricle", "csf")
SEPARATION = 0.5  # neighbouring components' means apart by this many of their pooled SDs (else one tissue)
MODEL_REACH = 2.5  # standard deviations past the outer tissues' means that the model still speaks for
MIN_SAMPLE = 500
SAMPLE = 200_000   # grey levels a model is fitted on, at most
EM_ROUNDS = 30


def tissue_of(text: str) -> str | None:
    """GREY, WHITE or CSF when a class's text names that brain tissue, else None."""
    words = " ".join(text.lower().replace("-", " ").replace("_", " ").split())
    if not any(w in words for w in BRAIN_WORDS) or any(w in words for w in NOT_BRAIN):
        return None
    return next((tissue for tissue, names in WORDS if any(n in words for n in names)), None)


def three_tissues(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Means, standard deviations and weights (ascending means) of a three-component Gaussian
    mixture of the grey levels (0..255), or None when too few levels or neighbouring components
    less than SEPARATION apart."""
    if levels.size < MIN_SAMPLE:
        return None
    x = levels[:: max(1, levels.size // SAMPLE)].astype(np.float64)
    classes = np.digitize(x, otsu_thresholds(x))
    if np.bincount(classes, minlength=3).min() < 2:
        return None
    weight = np.bincount(classes, minlength=3) / x.size
    mean = np.array([x[classes == j].mean() for j in range(3)])
    sd = np.array([x[classes == j].std() for j in range(3)]) + 1.0
    for _ in range(EM_ROUNDS):
        log_p = -0.5 * ((x[:, None] - mean) / sd) ** 2 - np.log(sd) + np.log(weight)
        resp = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        n = resp.sum(axis=0) + 1e-9
        weight, mean = n / n.sum(), (resp * x[:, None]).sum(axis=0) / n
        sd = np.sqrt((resp * (x[:, None] - mean) ** 2).sum(axis=0) / n) + 1.0  # a floor of one grey level
    order = np.argsort(mean)
    mean, sd, weight = mean[order], sd[order], weight[order]
    pooled = np.sqrt((sd[:-1] ** 2 + sd[1:] ** 2) / 2)
    return (mean, sd, weight) if np.all(np.diff(mean) >= SEPARATION * pooled) else None


def otsu_thresholds(x: np.ndarray, bins: int = 64) -> np.ndarray:
    """The two grey levels that split `x` into three classes of the largest between-class variance
    (multi-level Otsu on a histogram): the mixture's start, where percentiles put two components
    on a tissue that fills most of the box."""
    counts, edges = np.histogram(x, bins=bins, range=(0, 256))
    centres = (edges[:-1] + edges[1:]) / 2
    n, s = np.concatenate([[0], np.cumsum(counts)]), np.concatenate([[0], np.cumsum(counts * centres)])
    best, cut = -1.0, (bins // 3, 2 * bins // 3)
    for i in range(1, bins - 1):
        for j in range(i + 1, bins):
            parts = ((0, i), (i, j), (j, bins))
            score = sum((s[b] - s[a]) ** 2 / (n[b] - n[a]) for a, b in parts if n[b] > n[a])
            if score > best:
                best, cut = score, (i, j)
    return edges[list(cut)]


def tissue_llr(sample: np.ndarray, tissue: str, padding: int) -> np.ndarray | None:
    """Per grey level (app.prior.grey_levels' BINS), the log likelihood ratio of `tissue` against
    the likelier of the two others in a three-tissue model of the grey levels `sample`, clipped at
    LLR_CLIP: grey matter is the middle component, CSF the lighter of the two others, white matter
    the heavier. 0 beyond MODEL_REACH standard deviations past the outer components (Gaussians
    extrapolate badly) and at or below `padding` (a skull-stripped scan's background); None when
    the sample does not hold three clearly separate tissues."""
    model = three_tissues(sample[sample > padding])
    if model is None:
        return None
    mean, sd, weight = model
    light = 0 if weight[0] < weight[2] else 2
    own = {GREY: 1, CSF: light, WHITE: 2 - light}[tissue]
    centres = (np.arange(BINS) + 0.5) * (256 / BINS)
    log_p = -0.5 * ((centres[:, None] - mean) / sd) ** 2 - np.log(sd)
    llr = log_p[:, own] - np.max(np.delete(log_p, own, axis=1), axis=1)
    modelled = (centres > mean[0] - MODEL_REACH * sd[0]) & (centres < mean[2] + MODEL_REACH * sd[2])
    modelled &= np.arange(BINS) > padding // (256 // BINS)
    return np.where(modelled, np.clip(llr, -LLR_CLIP, LLR_CLIP), 0.0).astype(np.float32)
