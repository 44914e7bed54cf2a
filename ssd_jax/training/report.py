"""Pictures of a run: loss and mAP curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_curves(history: dict, path: str) -> None:
    """PNG with the training loss (left) and validation mAP@0.5 (right) against the step."""
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(history["step"], history["loss"])
    ax_loss.set(xlabel="step", ylabel="loss (cls + bbox)", title="training loss")
    ax_map.plot(history["eval_step"], history["mAP"], marker="o")
    ax_map.set(xlabel="step", ylabel="mAP@0.5", title="validation", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
