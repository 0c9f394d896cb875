"""Progress in a log is plain lines with elapsed time and ETA (no carriage returns), at most one per
interval and always the last; inner loops stay quiet; a terminal gets a bar."""

from __future__ import annotations

from vitnas.progress import clock, eta, progress


def test_lines_in_a_log(capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    bar = progress(total=3, desc="search", unit="generations")
    for best in (0.5, 0.7, 0.9):
        bar.set_postfix(best=best)
        bar.update(1)
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in out] == ["search: 1/3 generations", "search: 2/3 generations",
                                                      "search: 3/3 generations"]
    assert "ETA" in out[0] and out[0].endswith("best 0.5") and "ETA" not in out[2] and "\r" not in "".join(out)


def test_throttled_lines_keep_the_last_and_inner_loops_are_quiet(capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert list(progress(range(50), desc="proxy", unit="candidates", every_s=3600)) == list(range(50))
    assert [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()] == \
        ["proxy: 1/50 candidates", "proxy: 50/50 candidates"]
    assert list(progress([1, 2], desc="epoch 1", lines=False)) == [1, 2]
    assert list(progress([1, 2], desc="off", enabled=False)) == [1, 2]
    assert capsys.readouterr().out == ""


def test_a_terminal_gets_a_bar(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert type(progress(total=2, desc="x")).__name__ == "tqdm"


def test_times_read_like_times():
    assert [clock(s) for s in (4.4, 185, 3725)] == ["4s", "3m05s", "1h02m"]
    assert eta(1, 4, 10.0) == "elapsed 10s, ETA 30s" and eta(4, 4, 40.0) == "elapsed 40s"
