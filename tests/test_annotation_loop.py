"""bench/annotation_loop.py --quick runs the loop end to end with the tiny model: rounds of picked, "corrected"
and retrained sentences for each strategy, one JSON line per round, a PNG plot."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_annotation_loop_writes_a_line_per_round_and_a_plot(tmp_path):
    plot = tmp_path / "loop.png"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "annotation_loop.py"), "--quick", "--plot", str(plot),
                           "--threads", "1"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rounds, summary = lines[:-1], lines[-1]
    for strategy in ("random", "doubt"):
        mine = [r for r in rounds if r["strategy"] == strategy]
        assert [r["annotations"] for r in mine] == [20, 40, 60]
        assert all(0 <= r["f1"] <= 1 and r["train_s"] > 0 for r in mine)
        assert mine[0]["work_saved"] is None and all(r["work_saved"] is not None for r in mine[1:])
    assert summary["bench"] == "annotation_loop" and set(summary["final"]) == {"random+warm", "doubt+warm"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
