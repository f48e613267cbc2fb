"""Expected library noise, logged once at info level; anything unexpected stays a warning.

transformers logs a "LOAD REPORT" table at warning level whenever a checkpoint's weights do not match the model
built from it. Fine-tuning a base for token classification always gives one: the new head's weights are MISSING
(initialised, then trained) and the base's own head or pooler are UNEXPECTED (unused), or a head of other labels is
re-initialised for a size MISMATCH. That report is expected and reads as an error; ``quiet_expected_load_reports``
turns it into one info line per process. A report with any other row (a missing encoder weight, a conversion error)
is left as transformers logs it.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# Weights of a token-classification head (created new) and of the parts a base carries that such a model drops.
HEAD = re.compile(r"^(?:[\w.]*\.)?(?:classifier|score|head)\b")
DROPPED = re.compile(r"^(?:[\w.]*\.)?(?:pooler|cls|lm_head|vocab_\w+|predictions|generator_\w+|discriminator_\w+|"
                     r"mask_predictions|qa_outputs|head|classifier|score|lm_predictions|pre_classifier)\b")
EXPECTED = {"MISSING": HEAD, "UNEXPECTED": DROPPED, "MISMATCH": HEAD}
_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")
_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report")


def report_rows(message: str) -> list[tuple[str, str]] | None:
    """The (key, status) rows of a LOAD REPORT message; None when ``message`` is not one."""
    text = _ANSI.sub("", message)
    if "LOAD REPORT" not in text:
        return None
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) >= 2 and cells[1].isupper() and cells[0] and cells[0] != "Key" and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1]))
    return rows


def expected(rows: list[tuple[str, str]]) -> bool:
    """True when every row is what a new token-classification head on a base gives."""
    return bool(rows) and all(status in EXPECTED and EXPECTED[status].match(key) for key, status in rows)


class ExpectedLoadReport(logging.Filter):
    """Drops an expected LOAD REPORT and logs one info line instead, the first time only (per process)."""

    def __init__(self) -> None:
        super().__init__()
        self.told = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            rows = report_rows(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot be read is passed on as it is
            return True
        if rows is None or not expected(rows):
            return True
        if not self.told:
            self.told = True
            counts = {status: sum(1 for _, s in rows if s == status) for status in sorted({s for _, s in rows})}
            log.info("the base model gets a new token-classification head, as expected (transformers' load report: "
                     "%s); further such reports are not logged", ", ".join(f"{n} {s}" for s, n in counts.items()))
        return False


_FILTER = ExpectedLoadReport()


def quiet_expected_load_reports() -> None:
    """Install the filter on transformers' loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
