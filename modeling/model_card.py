"""Reading a saved model's card (README.md in a directory, or on the Hub): its text and metadata, e.g. the
validation-chosen `decision_threshold` that `report.build_model_card` writes."""

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard


def read_model_card(source: str | Path) -> tuple[str | None, dict[str, Any]]:
    """(card text, metadata dict) of a model directory or Hub id; (None, {}) when it has no card (it is optional)."""
    path = Path(source) / "README.md"
    if Path(source).is_dir() and not path.is_file():
        return None, {}
    try:
        card = ModelCard.load(path if path.is_file() else str(source), ignore_metadata_errors=True)
    except Exception:  # no card on the Hub, or offline
        return None, {}
    return card.text, card.data.to_dict()
