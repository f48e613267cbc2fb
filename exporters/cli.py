"""Command line of the exporters: ``python -m exporters convert ...`` (see ``--help``).

Parses arguments, reads examples through ``backend.data`` (a live project through the backend's one Label Studio
client, ``backend.shared.labelstudio``), writes through ``exporters.writers``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from backend.data.formats import FORMATS, FormatError, detect_format, keyed_tasks_to_examples, read_examples, read_tasks_json
from backend.data.schema import LabelConfigError, LabelSchema, load_label_config, parse_label_config
from backend.data.spans import ConversionReport, Example, has_entities
from backend.data.splits import DEFAULT_SPLIT, parse_fractions, split_keyed
from backend.data.tasks import IMPORTED_MODEL_VERSION, example_to_task, infer_schema
from backend.shared.labelstudio import Credentials, LabelStudioClient, LabelStudioError
from exporters import writers

T = TypeVar("T")
Keyed = list[tuple[str | int, Example]]

PROGRESS_THRESHOLD = 1000  # progress bars only for inputs larger than this many tasks/sentences
SPLIT_SUFFIX = {"conll2003": ".conll", "bio": ".bio"}

EPILOG = f"""\
input:
  INPUT is a Label Studio JSON export (ls-json), an MIT-style BIO file (TAG<TAB>token) or a CoNLL 2003 file
  (token -X- _ TAG); the format is detected from the content unless --from is given. Or read a live project
  with --url URL --project ID (--api-key, default $LABEL_STUDIO_API_KEY); its label config is used.
  Labels: from --label-config when given (tags of other labels become O), else the project's config (live),
  else inferred from the data in first-seen order; for ls-json the from_name/to_name/data key are then taken
  from the most common 'labels' result. Which annotation of a task counts: never a cancelled one; a ground
  truth one first; else the most recently updated. Tasks without one are skipped (and counted).

output (-o):
  conll2003  Label Studio's CoNLL 2003 layout ('-DOCSTART- -X- O', blank line, 'token -X- _ TAG', IOB2).
  bio        MIT-style 'TAG<TAB>token', blank line between sentences.
             Both: OUTPUT is one file with every example; with --split, OUTPUT is a folder holding one file per
             split: train.conll/validation.conll/test.conll (or .bio).
  dataset    A Hugging Face DatasetDict saved with save_to_disk into the folder OUTPUT: columns id, tokens,
             ner_tags (ClassLabel names = O, B-x, I-x per label); splits by --split (default {DEFAULT_SPLIT};
             'none' = one 'train' split).
  tasks      Label Studio tasks JSON to import: text rebuilt with single spaces, spans with exact offsets, as
             annotations or (--as predictions) predictions with model_version '{IMPORTED_MODEL_VERSION}'.
  Splits are deterministic: sha1 of the task id (sentence number for files), so adding tasks moves no old one.

exit status: 0 when something was converted (what was skipped or repaired is summarised on stderr),
  1 when nothing usable was read or written, 2 for wrong arguments.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporters", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert",
        help="convert Label Studio annotations <-> CoNLL 2003 / BIO / datasets / tasks",
        description="Convert a Label Studio export (file or live project) to CoNLL 2003, BIO or a Hugging Face "
        "dataset; or BIO/CoNLL files to Label Studio tasks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("input", nargs="?", metavar="INPUT", help="input file (omit with --url)")
    convert.add_argument("--to", required=True, choices=("conll2003", "bio", "dataset", "tasks"), help="output format")
    convert.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file or folder (see below)")
    convert.add_argument("--from", dest="from_format", choices=FORMATS, help="input format (default: detected)")
    convert.add_argument("--label-config", metavar="XML", help="Label Studio labelling config file (e.g. label_config/restaurant.xml)")
    convert.add_argument("--from-name", help="the <Labels name=...> to use when the config has several")
    convert.add_argument("--to-name", help="the <Text name=...> to use when that <Labels> points at several")
    convert.add_argument("--as", dest="as_", choices=("annotations", "predictions"), default="annotations",
                         help="--to tasks: import the tags as annotations (default) or predictions")
    convert.add_argument("--model-version", default=IMPORTED_MODEL_VERSION, help="--as predictions: their model_version")
    convert.add_argument("--split", metavar="TRAIN/VAL/TEST", help=f"e.g. {DEFAULT_SPLIT}, 90/10, or none")
    convert.add_argument("--url", help="Label Studio URL of a live project (instead of INPUT)")
    convert.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="Label Studio API key (default: $LABEL_STUDIO_API_KEY)")
    convert.add_argument("--project", type=int, help="project id, with --url")
    convert.set_defaults(handler=run_convert)
    return parser


class UsageError(Exception):
    """Arguments that do not fit together; reported like argparse's own errors (exit 2)."""


def _progress(items: Sequence[T], desc: str) -> Iterable[T]:
    if len(items) <= PROGRESS_THRESHOLD:
        return items
    from tqdm import tqdm

    # disable=None hides the bar when stderr is not a terminal (CI logs, pipes)
    return tqdm(items, desc=desc, unit=" items", file=sys.stderr, disable=None)


def _config_schema(args: argparse.Namespace) -> LabelSchema | None:
    return load_label_config(args.label_config, args.from_name, args.to_name) if args.label_config else None


def _read_tasks(tasks: list[dict], schema: LabelSchema, report: ConversionReport) -> Keyed:
    keyed = keyed_tasks_to_examples(_progress(tasks, "tasks"), schema, report)
    if keyed and not has_entities(example for _, example in keyed):
        seen = infer_schema(tasks)
        if seen.labels and seen.from_name != schema.from_name:
            print(f"warning: no span of <Labels name={schema.from_name!r}> found, but spans of {seen.from_name!r}; "
                  "check --label-config/--from-name", file=sys.stderr)
    return keyed


def read_input(args: argparse.Namespace, report: ConversionReport) -> tuple[Keyed, LabelSchema, str]:
    """``(key, example)`` pairs, the label schema, and a description of the input."""
    schema = _config_schema(args)
    if args.url:
        project = LabelStudioClient(Credentials(args.url.rstrip("/"), args.api_key)).export_project(args.project)
        schema = schema or parse_label_config(project.label_config, args.from_name, args.to_name)
        return _read_tasks(project.tasks, schema, report), schema, f"project {args.project} at {args.url}"

    fmt = args.from_format or detect_format(args.input)
    if fmt == "ls-json":
        tasks = read_tasks_json(args.input)
        schema = schema or infer_schema(tasks)
        keyed = _read_tasks(tasks, schema, report)
        if not keyed:
            raise FormatError(f"{args.input}: no usable annotated task among {len(tasks)} tasks")
    else:
        examples, schema = read_examples([args.input], fmt, schema, report)
        # files have no ids: the 1-based sentence number is the split key, which is also the position key of
        # the tasks written from the file (they have no ids), so both land in the same splits
        keyed = list(enumerate(examples, start=1))
    return keyed, schema, f"{args.input} ({fmt})"


def write_output(args: argparse.Namespace, keyed: Keyed, schema: LabelSchema, report: ConversionReport) -> str:
    """Write the examples as ``--to`` asks; return a description of what was written."""
    output = Path(args.output)
    if args.to == "tasks":
        tasks = [example_to_task(example, schema, args.as_, args.model_version) for _, example in _progress(keyed, "tasks")]
        writers.write_tasks(tasks, output)
        return f"{len(tasks)} tasks ({args.as_}) to {output}"

    split = args.split or (DEFAULT_SPLIT if args.to == "dataset" else "none")
    fractions = [("train", 1.0)] if split.lower() == "none" else parse_fractions(split)
    groups = split_keyed(((key, (key, example)) for key, example in keyed), fractions)
    sizes = ", ".join(f"{name} {len(items)}" for name, items in groups.items())
    if args.to == "dataset":
        writers.write_dataset(groups, schema.bio_labels, output, progress=len(keyed) > PROGRESS_THRESHOLD)
        return f"DatasetDict ({sizes}; {len(schema.bio_labels)} tag names) to {output}"

    def write(examples: list[Example], path: Path) -> None:
        if args.to == "conll2003":
            writers.write_conll2003(examples, path, report)
        else:
            writers.write_bio(examples, path)

    if split.lower() == "none":
        if output.is_dir():
            raise UsageError(f"{output} is a folder; without --split, -o names the output file")
        write([example for _, example in keyed], output)
        return f"{len(keyed)} sentences to {output}"
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output} is a file; with --split, -o names a folder for one file per split")
    for name, items in groups.items():
        write([example for _, example in items], output / f"{name}{SPLIT_SUFFIX[args.to]}")
    return f"{len(keyed)} sentences ({sizes}) to {output}/"


def _check_arguments(args: argparse.Namespace) -> None:
    if bool(args.input) == bool(args.url):
        raise UsageError("give either INPUT or --url (with --project and --api-key)")
    if args.url and (args.project is None or not args.api_key):
        raise UsageError("--url needs --project ID and --api-key KEY (or $LABEL_STUDIO_API_KEY)")
    if args.to == "tasks" and args.split:
        raise UsageError("--split does not apply to --to tasks")
    if args.split and args.split.lower() != "none":
        parse_fractions(args.split)


def run_convert(args: argparse.Namespace) -> int:
    report = ConversionReport()
    try:
        _check_arguments(args)
        keyed, schema, source = read_input(args, report)
        written = write_output(args, keyed, schema, report)
    except (UsageError, ValueError) as error:
        if isinstance(error, (FormatError, LabelConfigError)):
            print(f"error: {error}", file=sys.stderr)
            if report:
                print(f"problems found: {report.summary()}", file=sys.stderr)
            return 1
        print(f"python -m exporters convert: error: {error}", file=sys.stderr)
        return 2
    except LabelStudioError as error:
        print(f"error: {error}; check --url, --api-key and --project", file=sys.stderr)
        return 1
    except OSError as error:  # the output could not be written (permissions, disk full, a file in the way)
        print(f"error: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"read {len(keyed)} examples from {source}; labels: {', '.join(schema.labels) or '(none)'}", file=sys.stderr)
    print(f"wrote {written}", file=sys.stderr)
    if report:
        print(f"skipped or repaired: {report.summary()}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
