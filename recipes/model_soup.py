"""A model soup of fine-tuned model directories (`modeling.soup`): the uniform average of their weights, or with
`--greedy` Wortsman et al.'s greedy soup, scored by the mean per-source ROC AUC on the original validation images
(`modeling.selection`, what chooses the project's releases). The result is a model directory like any other: release
it with `train_hf.py --skip_training true --model_name_or_path OUT ...` (calibration, OOD detector, card, report).

    python recipes/model_soup.py OUT DIR [DIR ...] [--greedy] [--dataset SRC ...] [--scores FILE.json]

Models of one architecture fine-tuned from the same initialisation mix (e.g. the runs of one recipe with other seeds,
input sizes or a moving average); others are refused. `--scores` takes the models' own scores ({directory name:
score}, or a `validation_on_originals.py --out` file) so that the greedy search does not score them again. Each score
costs one pass over the validation images (~80 s for EfficientNet-Lite2 at 288 px on 2 CPU cores)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.selection import validation_scores, validation_set  # noqa: E402
from modeling.soup import greedy_soup, write_soup  # noqa: E402

SOURCES = ["../shared/data/isic2020-part", "../shared/data/isic2019-part"]


def known_scores(path: Path | None, dirs: list[Path]) -> dict[str, float]:
    if path is None:
        return {}
    data = json.loads(path.read_text())
    by_name = {name: (v["mean"] if isinstance(v, dict) else v) for name, v in data.get("roc_auc", data).items()}
    return {str(d): by_name[d.name] for d in dirs if d.name in by_name}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--greedy", action="store_true", help="the greedy soup (default: all models, uniform)")
    parser.add_argument("--dataset", nargs="+", default=SOURCES, help="the sources whose validation splits score")
    parser.add_argument("--scores", type=Path, default=None, help="JSON of the models' own scores")
    args = parser.parse_args(argv)
    data = validation_set(args.dataset)
    results: dict[str, dict] = {}

    def score(model_dir: Path) -> float:
        results[str(model_dir)] = validation_scores(model_dir, data)[1]
        return results[str(model_dir)]["mean"]

    record: dict = {"score_name": "mean per-source validation ROC AUC on the original images of "
                                  + ", ".join(Path(s).name for s in args.dataset)}
    if args.greedy:
        with tempfile.TemporaryDirectory() as work:
            chosen, search = greedy_soup(args.models, score, work, scores=known_scores(args.scores, args.models))
        record.update(search)
    else:
        chosen = args.models
    out = write_soup(args.output_dir, chosen, record)
    record["score"] = score(out)  # the written soup, scored once more (for greedy: the same as its kept trial)
    record["score_by_source"] = results[str(out)]
    settings_file = out / "training_settings.json"
    settings = json.loads(settings_file.read_text())
    settings["soup"].update(record)
    settings_file.write_text(json.dumps(settings, indent=1))
    print(f"{out}: {len(chosen)} model(s), {', '.join(d.name for d in chosen)}; score {record['score']:.4f}")
    return record


if __name__ == "__main__":
    main()
