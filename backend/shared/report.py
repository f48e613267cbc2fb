"""How a training run's scores are shown: the block in the project's instructions, the ML record's one-line
description and its title (the model card), the ``GET /report`` page (per-entity table and F1 bars, no
JavaScript), and what /status and the card say of a publishing that stopped or a version that no longer fits.
"""
from __future__ import annotations

from html import escape
from typing import Any, Iterable

from backend.data.suggestions import OUTCOMES
from backend.model.metrics import EntityScore, F1Difference, Scores
from backend.shared.labelstudio import REPORT_END, REPORT_START, REVIEW_START
from backend.shared.public import display_name
from backend.shared.store import Manifest


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _per_entity(scores: Scores | None) -> dict[str, EntityScore]:
    return dict(scores.per_entity) if scores else {}


def _overall(scores: Scores | None) -> EntityScore | None:
    return scores.overall if scores else None


def _f1(score: EntityScore | None) -> float | None:
    return score.f1 if score else None


def _entity_order(manifest: Manifest) -> list[str]:
    """Config order first (manifest.labels), then any other entity the scores name."""
    seen = list(manifest.labels)
    for scores in (manifest.scores, manifest.previous_scores):
        seen += [label for label in _per_entity(scores) if label not in seen]
    return seen


def _decision(manifest: Manifest, current: str | None = None, promoted: set[str] | None = None) -> str:
    """What became of the version. Right after its run (no ``promoted`` given) the run's own decision, which it
    has just carried out; later, what the store's pointer says (a run killed before promoting never served)."""
    if promoted is None:
        return "promoted: now serving" if manifest.promoted else "not promoted: the previous model keeps serving"
    if manifest.version == current:
        return "promoted: now serving"
    if manifest.version in promoted:
        return f"promoted earlier; {current or 'no model'} serves now"
    return f"not promoted: {current or 'no model'} serves"


def _table(manifest: Manifest) -> str:
    """The per-entity table (precision, recall, F1, support, previous model's F1), overall row last; only
    attributes Label Studio's HTML sanitiser keeps, so the block reads back exactly as written."""
    rows = []
    current, previous = _per_entity(manifest.scores), _per_entity(manifest.previous_scores)
    entries = [(label, current.get(label), previous.get(label)) for label in _entity_order(manifest)]
    entries.append(("overall", _overall(manifest.scores), _overall(manifest.previous_scores)))
    for label, score, before in entries:
        cells = [escape(label), _number(score and score.precision), _number(score and score.recall),
                 _number(_f1(score)), str(score.support) if score else "–", _number(_f1(before))]
        tag = "th" if label == "overall" else "td"
        rows.append("<tr>" + "".join(f"<{tag}>{cell}</{tag}>" for cell in cells) + "</tr>")
    previous_name = escape(manifest.previous_version or "previous")
    header = "".join(f"<th>{name}</th>" for name in
                     ("entity", "precision", "recall", "F1", "support", f"F1 of {previous_name}"))
    return (f'<table border="1" cellpadding="4"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


RELOAD_NOTE = ("<p>A run's progress (fetching, training in steps of 5%, evaluating, publishing) shows on the "
               "backend's card under Settings → Model; reload that page to see it move.</p>")


def _headline(manifest: Manifest) -> tuple[str, str]:
    """The serving version and its F1 first; a candidate kept out second, worded as such. Each version's F1 is the
    one measured on this run's validation tasks, and says so when the version was trained before this run."""
    tasks = f"on this run's {manifest.validation_size} validation tasks"
    if manifest.promoted or not manifest.previous_version:
        lead = f"<h3>NER model {escape(manifest.version)} serving: F1 {_number(manifest.f1)}</h3>"
        before = (f" Before: {escape(manifest.previous_version)}, F1 {_number(manifest.previous_f1)} {tasks}."
                  if manifest.previous_version else "")
        return lead, before
    lead = (f"<h3>NER model {escape(manifest.previous_version)} serving: F1 {_number(manifest.previous_f1)} "
            f"{tasks}</h3>")
    kept = (f" Candidate {escape(manifest.version)}, kept out: F1 {_number(manifest.f1)} on the same validation "
            "tasks.")
    return lead, kept


def instruction_block(manifest: Manifest) -> str:
    """The HTML block written into the project's instructions after a successful training run: the serving version
    and its F1 lead, a candidate kept out comes second."""
    lead, other = _headline(manifest)
    return (
        f"{REPORT_START}{lead}"
        f"<p>Latest run: {escape(manifest.version)}, trained {escape(manifest.created_at)} on {manifest.train_size} "
        f"tasks, validated on {manifest.validation_size} tasks, in {manifest.training_seconds:.0f} s; "
        f"<b>{_decision(manifest)}</b>.{other}</p>{_comparison(manifest)}{_kept(manifest)}"
        f"{_table(manifest)}{RELOAD_NOTE}{REPORT_END}"
    )


def failure_block(error: str, serving: str | None, when: str) -> str:
    """The instructions block after a failed run: what failed and which version keeps serving."""
    return (
        f"{REPORT_START}<h3>NER model training failed</h3>"
        f"<p>{escape(when)}: {escape(error)}</p>"
        f"<p>Serving: {escape(serving or 'no model yet')}.</p>{RELOAD_NOTE}{REPORT_END}"
    )


def ml_description(manifest: Manifest) -> str:
    """One line for the ML backend record: version, overall P/R/F1, sizes, time, decision."""
    overall = _overall(manifest.scores)
    state = "promoted" if manifest.promoted else "not promoted"
    serving = ""  # the serving version first when the candidate was kept out
    if not manifest.promoted and manifest.previous_version:
        serving = (f"{manifest.previous_version} serving: F1 {_number(manifest.previous_f1)} on "
                   f"{manifest.version}'s validation tasks; ")
    return (f"{serving}{manifest.version} ({state}): P {_number(overall and overall.precision)} "
            f"R {_number(overall and overall.recall)} F1 {_number(_f1(overall))}; "
            f"train {manifest.train_size} / validation {manifest.validation_size} tasks; {manifest.created_at}")


def failure_description(error: str, serving: str | None, when: str) -> str:
    first_line = error.splitlines()[0] if error else "unknown error"
    return f"training failed {when}: {first_line[:200]}; serving {serving or 'no model yet'}"


def outcome_title(summary: dict[str, Any]) -> str:
    """The card's title after a run: the serving version and its F1 first, a candidate kept out second (with the F1
    difference's interval when there is one, e.g. ``NER · v2 serving · F1 0.699 on v3's validation tasks · v3 kept
    out: F1 0.689; ΔF1 -0.041, 90% -0.070 to -0.012``)."""
    f1 = summary.get("f1")
    scored = f" · F1 {f1:.3f}" if isinstance(f1, float) else ""
    difference = _difference_of(summary)
    if summary.get("version") is None:
        return f"NER · {summary.get('previous_version') or 'no model'} serving · nothing new"
    if summary.get("promoted"):
        return f"NER · {summary['version']} serving{scored}" + (f" · {difference.text()}" if difference else "")
    version, previous_f1 = summary["version"], summary.get("previous_f1")
    serving = f"NER · {summary.get('previous_version')} serving"
    if isinstance(previous_f1, float):
        serving += f" · F1 {previous_f1:.3f} on {version}'s validation tasks"
    kept = f" · {version} kept out" + (f": F1 {f1:.3f}" if isinstance(f1, float) else "")
    return serving + kept + (f"; {difference.text()}" if difference and isinstance(f1, float) else "")


def _difference_of(summary: dict[str, Any]) -> F1Difference | None:
    data = summary.get("f1_difference")
    return F1Difference.from_dict(data) if isinstance(data, dict) else None


def _outcome_totals(per_label: dict[str, dict[str, int]]) -> dict[str, int]:
    return {o: sum(counts.get(o, 0) for counts in per_label.values()) for o in OUTCOMES}


def _kept(manifest: Manifest) -> str:
    """One sentence per model version: what annotators did with its suggestions, on the tasks it was shown on."""
    data = manifest.suggestions or {}
    lines = []
    for version, per_label in (data.get("versions") or {}).items():
        total = _outcome_totals(per_label)
        suggested = sum(total[o] for o in OUTCOMES if o != "added")
        if not suggested and not total["added"]:
            continue
        shares = ", ".join(f"{total[o] / suggested:.0%} {o}" for o in OUTCOMES if o != "added" and suggested)
        lines.append(f"{escape(version)} on {data.get('tasks', {}).get(version, 0)} annotated tasks: of "
                     f"{suggested} suggested spans {shares or 'none'}; {total['added']} spans added by hand")
    return ("<p>What annotators kept of the suggestions: " + "; ".join(lines) + ".</p>") if lines else ""


def _kept_chart(manifest: Manifest) -> str:
    """Per model version, a bar of its suggested spans split by outcome (no JavaScript), and a per-entity table."""
    versions = (manifest.suggestions or {}).get("versions") or {}
    if not versions:
        return ""
    colours = {"kept": "#3b7dd8", "relabelled": "#e0a030", "resized": "#8cb5ea", "deleted": "#d05050",
               "added": "#999"}
    parts = ["<h2>What annotators kept of the suggestions</h2><div class='bars'>"]
    for version, per_label in versions.items():
        total = _outcome_totals(per_label)
        whole = sum(total.values()) or 1
        segments = "".join(f"<div title='{o}: {total[o]}' style='width:{100 * total[o] / whole:.1f}%;"
                           f"background:{colours[o]};height:100%'></div>" for o in OUTCOMES if total[o])
        parts.append(f"<div class='bar-row'><span class='bar-label'>{escape(version)}</span><span class='bar-track' "
                     f"style='display:flex'>{segments}</span></div>")
    parts.append("</div><p class='muted'>" + " ".join(f"<span style='color:{colours[o]}'>&#9632;</span> {o}"
                                                       for o in OUTCOMES) + "</p>")
    parts.append("<table><thead><tr><th>version</th><th>entity</th>" + "".join(f"<th>{o}</th>" for o in OUTCOMES)
                 + "</tr></thead><tbody>")
    for version, per_label in versions.items():
        for label, counts in per_label.items():
            parts.append(f"<tr><td>{escape(version)}</td><td>{escape(label)}</td>"
                         + "".join(f"<td>{counts.get(o, 0)}</td>" for o in OUTCOMES) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _comparison(manifest: Manifest) -> str:
    """How the version compares with the one before, in words: the difference and its interval, and where the
    training started from."""
    parts = []
    if manifest.f1_difference is not None:
        d = manifest.f1_difference
        parts.append(f"F1 difference with {escape(manifest.previous_version or '')} on the same {d.tasks} validation "
                     f"tasks: {d.delta:+.3f}, {d.level:.0%} interval {d.low:+.3f} to {d.high:+.3f} (paired bootstrap "
                     f"over tasks, {d.rounds} rounds)")
    if manifest.started_from:
        parts.append(f"trained from {escape(manifest.started_from)}")
    return f"<p>{'; '.join(parts)}.</p>" if parts else ""


_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.bars { margin: 1em 0; max-width: 44em; }
.bar-row { display: flex; align-items: center; margin: 3px 0; }
.bar-label { width: 12em; }
.bar-track { flex: 1; background: #eee; height: 1.1em; position: relative; }
.bar { background: #3b7dd8; height: 100%; }
.bar.previous { background: #aaa; height: 35%; position: absolute; bottom: 0; }
.bar-value { width: 4em; text-align: right; }
.muted { color: #777; }
"""


def _bars(manifest: Manifest) -> str:
    """Per-entity F1 as CSS bars (grey underline: the previous model's F1)."""
    current, previous = _per_entity(manifest.scores), _per_entity(manifest.previous_scores)
    rows = []
    for label in _entity_order(manifest):
        f1 = _f1(current.get(label))
        before = _f1(previous.get(label))
        previous_bar = (f'<div class="bar previous" style="width:{100 * before:.1f}%"></div>'
                        if before is not None else "")
        rows.append(
            f'<div class="bar-row"><span class="bar-label">{escape(label)}</span><span class="bar-track">'
            f'<div class="bar" style="width:{100 * (f1 or 0):.1f}%"></div>{previous_bar}</span>'
            f'<span class="bar-value">{_number(f1)}</span></div>'
        )
    return f'<div class="bars">{"".join(rows)}</div>'


def report_page(project: str, manifests: Iterable[Manifest], current: str | None, status: dict[str, Any] | None,
                promoted: set[str] | None = None, review: str = "") -> str:
    """The ``GET /report`` page of one project: latest run in full, then every version in a table. ``current`` and
    ``promoted`` come from the store's pointer, never from a manifest's intent."""
    promoted = set(promoted or ()) | ({current} if current else set())
    manifests = list(manifests)
    title = f"NER backend: project {escape(str(project))}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_PAGE_STYLE}</style></head><body><h1>{title}</h1>",
             f"<p>Serving: <b>{escape(current or 'no model yet')}</b></p>"]
    if status and status.get("last_error"):
        parts.append(f"<p>Last training failed: {escape(str(status['last_error']))}</p>")
    for warning in (status or {}).get("warnings") or ():
        parts.append(f"<p>Warning: {escape(str(warning))}</p>")
    if status and status.get("training"):
        progress = status.get("progress") or {}
        parts.append(f"<p>Training now: {escape(str(progress.get('stage', '')))} step {progress.get('step', 0)}"
                     f"/{progress.get('total_steps', 0)}, {progress.get('elapsed_s', 0)} s</p>")
    if not manifests:
        parts.append(f"<p class='muted'>No training has finished yet.</p>{review}</body></html>")
        return "".join(parts)
    latest = manifests[-1]
    parts.append(f"<h2>Latest run: {escape(latest.version)} (F1 {_number(latest.f1)}, "
                 f"{escape(_decision(latest, current, promoted))})</h2>")
    parts.append(f"<p class='muted'>{latest.train_size} training and {latest.validation_size} validation tasks, "
                 f"{latest.training_seconds:.0f} s, base model {escape(display_name(latest.base_model))}, "
                 f"{escape(latest.created_at)}."
                 " Blue: F1 of this version; grey: F1 of the model serving before, on the same validation tasks.</p>")
    parts.append(f"<p>{escape(latest.decision)}</p>{_comparison(latest)}")
    parts.append(_bars(latest))
    parts.append(_table(latest))
    parts.append(_kept_chart(latest))
    parts.append("<h2>All versions</h2><table><thead><tr><th>version</th><th>created</th><th>F1</th>"
                 "<th>train</th><th>validation</th><th>promoted</th><th>serving</th></tr></thead><tbody>")
    for manifest in reversed(manifests):
        parts.append(f"<tr><td>{escape(manifest.version)}</td><td>{escape(manifest.created_at)}</td>"
                     f"<td>{_number(manifest.f1)}</td><td>{manifest.train_size}</td><td>{manifest.validation_size}</td>"
                     f"<td>{'yes' if manifest.version in promoted else 'no'}</td>"
                     f"<td>{'yes' if manifest.version == current else ''}</td></tr>")
    parts.append(f"</tbody></table>{review}</body></html>")
    return "".join(parts)


def publish_resumes(version: str) -> str:
    """What happens next to a publishing that stopped, in the words /status, the log and the card use."""
    return (f"publishing {version} resumes at the next /setup (Label Studio calls it when a task or the Model page "
            f"opens; at most once a minute), the queue's watchdog, or Start Training, and writes only the tasks "
            f"still missing it; until then annotators see the version announced before it")


def unfit_message(version: str, missing: list[str]) -> str:
    """What /status and the card say of a version whose labels the config lost, and what to do."""
    return (f"{version} does not fit the labels ({', '.join(missing)} not in the label config: renamed or "
            f"removed?); its suggestions are withdrawn: press Start Training to train on the new labels")


# --- the review (backend/training/review.py) -------------------------------------------------------------------
def task_link(label_studio: str, project: Any, task: Any) -> str:
    """The labeling view of one task: ``<Label Studio>/projects/<id>/data?task=<task>`` (relative without an address,
    as the Instructions block, shown inside Label Studio, needs)."""
    return f"{(label_studio or '').rstrip('/')}/projects/{project}/data?task={task}"


def finding_text(finding: dict) -> str:
    """One finding in words: ``other type: "thai" Dish, the model reads Cuisine``."""
    kind, text = finding.get("kind", ""), finding.get("text", "")
    if kind == "missing span":
        return f'missing span: "{text}", the model reads {finding.get("model_label")}'
    if kind == "extra span":
        return f'extra span: "{text}" {finding.get("label")}, the model reads no entity'
    if kind == "other type":
        return f'other type: "{text}" {finding.get("label")}, the model reads {finding.get("model_label")}'
    return (f'other boundary: "{text}" {finding.get("label")}, the model reads "{finding.get("model_text")}" '
            f'{finding.get("model_label")}')


def _agreement_line(agreement: dict) -> str:
    overall = (agreement or {}).get("overall") or {}
    if not agreement or not agreement.get("tasks"):
        return "Annotator agreement: no task has annotations by two or more people."
    pairs = "; ".join(f"{' / '.join(item['annotators'])} {_number(item.get('f1'))}"
                      for item in agreement.get("per_pair") or [])
    return (f"Annotator agreement (span F1) on {agreement['tasks']} task(s) with 2+ annotators: "
            f"{_number(overall.get('f1'))}" + (f"; per pair: {pairs}" if pairs else ""))


def review_block(record: dict, flagged: list[dict], label_studio: str = "") -> str:
    """The review's section of the Instructions: the flagged tasks most likely wrong first, each a link into its
    labeling view with what the model reads instead, and the annotators' agreement."""
    project = record.get("project")
    head = f"<h3>Review of the annotations ({escape(str(record.get('finished_at', '')))})</h3>"
    if record.get("message"):
        head += f"<p>{escape(record['message'])}</p>"
    else:
        head += (f"<p>{len(record.get('tasks') or [])} annotated tasks scored, each by a model that did not train on "
                 f"it ({record.get('folds')} folds); {len(flagged)} most likely wrong, first to last (the Data "
                 f"Manager tab &quot;Review: likely label errors&quot; holds them):</p>")
    items = []
    for item in flagged:
        said = "; ".join(finding_text(f) for f in (item.get("findings") or [])[:3])
        items.append(f"<li><a href=\"{escape(task_link(label_studio, project, item['task']))}\">task {item['task']}</a>"
                     f" (score {item['score']:.2f}): {escape(said)}</li>")
    body = f"<ol>{''.join(items)}</ol>" if items else ""
    unaligned = record.get("unaligned") or []
    if unaligned:
        body += (f"<p>{len(unaligned)} task(s) whose annotation does not fit its words: "
                 + ", ".join(f"task {u['task']} ({', '.join(u['problems'])})" for u in unaligned[:20]) + "</p>")
    body += f"<p>{escape(_agreement_line(record.get('agreement') or {}))}</p>"
    return f"{REVIEW_START}{head}{body}{REPORT_END}"


def review_title(record: dict, flagged: int) -> str:
    """The card's title after a review."""
    if record.get("message"):
        return f"NER · review: {record['message']}"[:200]
    return f"NER · review done: {flagged} task(s) likely mislabelled of {len(record.get('tasks') or [])}"


def review_section(record: dict, status_running: bool, label_studio: str = "", project: str | None = None) -> str:
    """The report page's review part: the button that starts one (POST /review), the last one's ranked tasks with
    links into Label Studio's labeling view, the tasks that do not fit their words, the agreement tables. ``record``
    is {} before the project's first review; ``project`` defaults to the record's."""
    project = project if project is not None else record.get("project", "")
    parts = ["<h2>Review of the annotations</h2>",
             "<form method='post' action='review?project=" + escape(str(project)) + "'>"
             "<button type='submit'>Review the annotations</button></form>"]
    if status_running:
        parts.append("<p>A run is going (see /status); a review asked now runs after it.</p>")
    if not record:
        parts.append("<p class='muted'>No review yet.</p>")
        return "".join(parts)
    if record.get("message"):
        parts.append(f"<p>{escape(record['message'])}</p>")
    parts.append(f"<p class='muted'>Last review {escape(str(record.get('finished_at', '')))}: "
                 f"{len(record.get('tasks') or [])} tasks scored in {record.get('folds', 0)} folds, "
                 f"{record.get('seconds', 0)} s. Score: how much likelier (log, nats) the model trained without the "
                 "task finds its own labelling than the annotation's.</p>")
    rows = []
    for item in record.get("tasks") or []:
        if not item.get("findings"):
            continue
        link = escape(task_link(label_studio, project, item["task"]))
        said = "<br>".join(escape(finding_text(f)) for f in item["findings"])
        rows.append(f"<tr><td><a class='review-task' href='{link}'>task {item['task']}</a></td>"
                    f"<td>{item['score']:.2f}</td><td>{said}</td></tr>")
    parts.append("<table class='review'><thead><tr><th>task</th><th>score</th><th>what the model reads</th></tr>"
                 f"</thead><tbody>{''.join(rows)}</tbody></table>")
    for item in record.get("unaligned") or []:
        parts.append(f"<p>Task {escape(str(item['task']))}: annotation does not fit its words "
                     f"({escape(', '.join(item['problems']))}).</p>")
    agreement = record.get("agreement") or {}
    parts.append(f"<p>{escape(_agreement_line(agreement))}</p>")
    if agreement.get("tasks"):
        per_type = "".join(f"<tr><td>{escape(kind)}</td><td>{_number(t.get('f1'))}</td><td>{t.get('spans')}</td></tr>"
                           for kind, t in agreement.get("per_type", {}).items())
        parts.append("<table class='agreement'><thead><tr><th>entity</th><th>F1</th><th>spans</th></tr></thead>"
                     f"<tbody>{per_type}</tbody></table>")
        worst = "".join(f"<li><a href='{escape(task_link(label_studio, project, d['task']))}'>task {d['task']}</a> "
                        f"F1 {_number(d['f1'])}</li>" for d in agreement.get("disagreements", [])[:20])
        parts.append(f"<p>Tasks where annotators disagree most:</p><ol>{worst}</ol>")
    return "".join(parts)
