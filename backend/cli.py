"""Command line of the backend: `python -m backend {train,evaluate,predict,serve,worker}`.

Each subcommand parses its arguments here and calls one library function; no ML logic lives in this file.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from backend.data.formats import FORMATS
from backend.data.spans import has_entities, replace_lone_surrogates
from backend.model.config import add_arguments
from backend.model.decoding import DECODINGS


# --- model commands: train / evaluate / predict (handlers call backend.model.train / backend.model.predict) ---
def _read_examples(paths: list[str], label_config: str | None, fmt: str | None = None):
    """Examples from every --data file and their label schema (the config's, else the data's labels)."""
    from backend.data.formats import read_examples
    from backend.data.spans import ConversionReport

    schema = None
    if label_config:
        from backend.data.schema import load_label_config

        schema = load_label_config(label_config)
    report = ConversionReport()
    examples, schema = read_examples(paths, fmt, schema, report)
    if report:
        print(f"read {len(examples)} examples; {report.summary()}", file=sys.stderr)
    return examples, schema


@contextlib.contextmanager
def _model_notes():
    """Inside the block, what training does to fit its base model (a replaced head, the word-start marker, shorter
    windows, a knob that cannot apply), logged by backend.model, shows as ``note: ...`` lines on stderr."""
    logger = logging.getLogger("backend.model")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _train_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from backend.model.base_model import check_base_model
    from backend.model.config import from_arguments
    from backend.model.train import train_model

    config = from_arguments(args)
    examples, schema = _read_examples(args.data, args.label_config, args.from_format)
    if not has_entities(examples):
        raise ValueError(
            f"no entity in the training data ({len(examples)} examples, every word tagged O): a model trained on it "
            "could only predict O; check that --data holds annotations and that the labels (and <Labels name>) of "
            "--label-config are those of the data")
    check_base_model(config.base_model)  # a missing folder, no config.json, no token-classification head
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {args.out}: a file is in the way (the trained version is a folder)")
    bars: list = []  # the progress bar, shown from the first step: an error before it stays one clean line

    def show(progress) -> None:
        if not bars:
            bars.append(tqdm(total=progress.total_steps, unit="step", file=sys.stderr, desc="training"))
        bar = bars[0]
        bar.total = progress.total_steps
        bar.set_postfix(epoch=progress.epoch, refresh=False)
        bar.update(progress.step - bar.n)

    try:
        with _model_notes():
            result = train_model(examples, schema.bio_labels, config, out, progress=show)
    finally:
        for bar in bars:
            bar.close()
    scores = result.selection_scores
    scored = (f"validation F1 {scores.overall.f1:.4f} on {result.validation_size} examples" if scores
              else f"scored on {result.scored_on}")
    print(f"saved {result.model_dir}: best epoch {result.best_epoch} of {result.epochs_run}, {scored}, "
          f"{result.train_time_s:.0f} s, {result.samples_per_s:.1f} samples/s")
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from backend.data.formats import respace_labels
    from backend.data.spans import example_entity_types
    from backend.model.predict import Predictor
    from backend.model.train import evaluate_model

    predictor = Predictor.load(args.model, device=args.device, threads=args.threads, decoding=args.decoding)
    examples, _ = _read_examples(args.data, None, args.from_format)
    examples = respace_labels(examples, predictor.entity_labels)  # "Restaurant_Name" of a CoNLL file
    unknown = sorted(set(example_entity_types(examples)) - set(predictor.entity_labels))
    if unknown:
        print(f"warning: labels in the data that the model does not know (they count as missed): {', '.join(unknown)}",
              file=sys.stderr)
    with tqdm(total=len(examples), unit="text", file=sys.stderr, desc="evaluating") as bar:
        scores = evaluate_model(predictor, examples, chunk=256, progress=lambda done, _: bar.update(done - bar.n))
    print(json.dumps(scores.to_dict()) if args.json else scores.table())
    return 0


def _predict_command(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from backend.model.predict import Predictor

    predictor = Predictor.load(args.model, device=args.device, threads=args.threads, decoding=args.decoding)

    def flush(lines: list[str]) -> None:
        for text, prediction in zip(lines, predictor.predict(lines)):
            spans = [asdict(span) for span in prediction.spans]
            print(json.dumps({"text": text, "score": prediction.score, "spans": spans}, ensure_ascii=False))
        sys.stdout.flush()

    pending: list[str] = []
    interactive = sys.stdin.isatty()  # typed lines are answered one by one, piped ones in batches
    for line in sys.stdin:
        # An undecodable byte arrives as a lone surrogate: U+FFFD in its place keeps the offsets and the output UTF-8.
        pending.append(replace_lone_surrogates(line.rstrip("\r\n")))
        if len(pending) >= args.batch_size or interactive:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    return 0


def _add_decoding(command) -> None:
    command.add_argument("--decoding", choices=DECODINGS, default="bio",
                         help="bio: the most probable valid BIO sequence (default); argmax: each word's top label, "
                              "as transformers' pipeline(aggregation_strategy='first')")


def add_model_commands(commands) -> None:
    """The train, evaluate and predict subcommands."""
    train = commands.add_parser("train", help="fine-tune a model on BIO / CoNLL 2003 / Label Studio JSON files")
    train.add_argument("--data", action="append", required=True, metavar="FILE",
                       help="training file (repeatable); format detected: BIO, CoNLL 2003 or Label Studio JSON export")
    train.add_argument("--from", dest="from_format", choices=FORMATS, help="format of every --data file (default: detected)")
    train.add_argument("--out", required=True, metavar="DIR", help="folder for the trained version")
    train.add_argument("--label-config", metavar="XML",
                       help="Label Studio label config: its labels (in its order) become the model's; default: labels seen in the data")
    add_arguments(train)  # one flag per TrainingConfig knob
    train.add_argument("--train-embeddings", dest="freeze_embeddings", action="store_false", default=None,
                       help="same as --no-freeze-embeddings")
    train.add_argument("--validation-fraction", dest="carve_fraction", type=float, help=argparse.SUPPRESS)  # old name
    train.set_defaults(handler=_train_command)

    evaluate = commands.add_parser("evaluate", help="score a saved model on annotated files (word-level seqeval)")
    evaluate.add_argument("--model", required=True, metavar="DIR")
    evaluate.add_argument("--data", action="append", required=True, metavar="FILE")
    evaluate.add_argument("--from", dest="from_format", choices=FORMATS, help="format of every --data file (default: detected)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int)
    _add_decoding(evaluate)
    evaluate.set_defaults(handler=_evaluate_command)

    predict = commands.add_parser("predict", help="texts on stdin (one per line) -> JSON lines of spans on stdout")
    predict.add_argument("--model", required=True, metavar="DIR")
    predict.add_argument("--batch-size", type=int, default=64, help="lines predicted together (default 64)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--threads", type=int)
    _add_decoding(predict)
    predict.set_defaults(handler=_predict_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # --- model commands (train / evaluate / predict) ---
    add_model_commands(commands)
    # --- serve ---
    serve = commands.add_parser("serve", help="run the ML backend HTTP server (gunicorn; settings from the environment)")
    serve.add_argument("--host", help="bind address (default: HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PORT, else 9090)")
    serve.add_argument("--workers", type=int, help="serving processes (default: WORKERS, else 1); more than one needs "
                                                   "TRAINING_QUEUE")

    def run_server(args: argparse.Namespace) -> int:
        from backend.serving.server import serve_command  # imported on use: gunicorn is not needed by the other commands

        return serve_command(args)

    serve.set_defaults(handler=run_server)
    # --- worker ---
    worker = commands.add_parser("worker", help="run an RQ worker that trains the jobs of TRAINING_QUEUE (one job "
                                                "at a time: one worker per GPU, or TRAIN_PROCESSES GPUs per job)")
    worker.add_argument("--queue", help="the queue's name (default: TRAINING_QUEUE_NAME, else ner-training)")
    worker.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")

    def run_worker(args: argparse.Namespace) -> int:
        from backend.training.worker import worker_command  # imported on use: rq is needed by this command only

        return worker_command(args)

    worker.set_defaults(handler=run_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    from backend.model.ranks import RankDied  # no torch: the launcher of --processes N

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as error:  # bad input (file, format, option, folder): one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RankDied as error:  # one of --processes N died (killed, out of memory): which, and where, in one line
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
