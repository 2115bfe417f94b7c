"""The news monitor on a replay of real labelled data with surges at known times.

    python examples/monitor_news_stream.py --out runs/monitor-news-stream
    lepton run examples/monitor-news.yaml [--set ...]      # PyTorch fp32 multi-task model
    lepton run examples/monitor-news-int8.yaml             # the same, ONNX Runtime dynamic INT8
    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/monitor.py

Measures, for each model:
  - detection: the whole stream replayed as fast as the model goes through the monitor's own
    engine and file source (SQLite store); per injected surge the delay from its start to the
    alert (stream time: the end of the window that fired), false alarms per 10,000 items;
  - sustained ingest throughput (items predicted and committed per second), in interleaved rounds
    (fp32, int8, fp32, int8 ...) on the same slice of the stream, so a busy machine hurts both;
  - ingest-to-stored latency p50/p99 at a paced rate both models sustain.
Writes benchmarks/results/monitor.{md,json} and a dashboard screenshot (monitor_dashboard.png).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

log = logging.getLogger("benchmark")


def monitor_for(model: Any, config: Path, out: Path, **overrides: Any) -> Any:
    from lepton.monitor.config import load_config
    from lepton.monitor.predict import ModelClassifier
    from lepton.monitor.runner import build_monitor

    sets = [f"output={out}", "server.enabled=false"] + [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(config, sets)
    monitor = build_monitor(None, cfg, classifier=ModelClassifier([model], cfg.predict))
    monitor.start()
    return monitor


def replay(model: Any, config: Path, stream: Path, out: Path, speed: float = 0.0) -> dict[str, Any]:
    """Replay ``stream`` into a fresh store; returns timings and the monitor (stopped)."""
    from lepton.monitor.sources import FileSource

    shutil.rmtree(out, ignore_errors=True)
    monitor = monitor_for(model, config, out)
    src = FileSource(monitor, stream, follow=False, speed=speed)
    started = time.perf_counter()
    src.run()
    seconds = time.perf_counter() - started
    monitor.stop()
    if src.error is not None:
        raise RuntimeError(f"replay failed: {src.error}")
    return {"items": src.read, "seconds": seconds, "items_per_s": src.read / seconds, "monitor": monitor,
            "latencies": list(monitor.latencies)}


def detection(monitor: Any, truth: dict[str, Any]) -> dict[str, Any]:
    """Match alerts to the injected surges by time and topic."""
    width = monitor.cfg.window.width_s
    alerts = sorted(monitor.store.alerts(limit=100_000), key=lambda a: a["first_start"])
    surges, used = [], set()
    for s in truth["surges"]:
        hits = [a for a in alerts if s["start"] - width <= a["first_start"] < s["end"] + width]
        on_topic = [a for a in hits if a["topic"] == s["topic"]]
        first = on_topic[0] if on_topic else None
        used.update(a["id"] for a in hits)
        surges.append({
            "surge": s["surge"], "per_minute": s["per_minute"], "minutes": s["minutes"], "items": s["items"],
            "detected": first is not None,
            "delay_min": round((first["first_start"] + width - s["start"]) / 60, 1) if first else None,
            "alert": first["id"] if first else None,
            "peak_share": round(first["peak_share"], 3) if first else None,
            "baseline_share": round(first["baseline_share"], 3) if first and first["baseline_share"] else None,
            "alerts_on_other_topics": sorted({a["topic"] for a in hits if a["topic"] != s["topic"]})})
    false = [a for a in alerts if a["id"] not in used]
    off_topic = sum(len(s["alerts_on_other_topics"]) for s in surges)
    n = truth["items"]
    quiet_items = n - truth["surge_items"]
    return {"surges": surges, "alerts": len(alerts), "false_alarms": len(false),
            "false_alarms_per_10k_items": round(len(false) / n * 10_000, 3),
            "off_topic_alerts_during_surges": off_topic,
            "false_alarm_topics": sorted(a["topic"] for a in false), "items": n, "background_items": quiet_items,
            "windows_tested": int(monitor.store.query(
                "SELECT COUNT(*) FROM windows WHERE p_value IS NOT NULL")[0][0])}


def quality(monitor: Any, truth: dict[str, Any]) -> dict[str, Any]:
    """How the models' labels compare with the data sets' own labels, on the stream."""
    labels = truth["labels"]
    rows = monitor.store.query("SELECT item_id, topic, sentiment FROM items")
    topic_ok = topic_n = sent_ok = sent_n = surge_bn = surge_n = 0
    for item_id, topic, sentiment in rows:
        true_topic, true_sent, surge = labels[item_id]
        if true_sent is None:
            topic_n += 1
            topic_ok += topic == true_topic
        else:
            sent_n += 1
            sent_ok += sentiment == true_sent
        if surge is not None:
            surge_n += 1
            surge_bn += topic == "Business" and sentiment == "negative"
    return {"topic_accuracy_agnews_items": round(topic_ok / topic_n, 4), "agnews_items": topic_n,
            "sentiment_accuracy_phrasebank_items": round(sent_ok / sent_n, 4), "phrasebank_items": sent_n,
            "surge_items_predicted_business_negative": round(surge_bn / surge_n, 4) if surge_n else None}


def parity(model: Any, texts: list[str]) -> dict[str, Any]:
    """One-pass predictions against predict(task=...) per task on real stream texts."""
    from lepton.monitor.onepass import predict_tasks

    # The same batches both ways (dynamic INT8 scales activations per batch, so batch make-up
    # alone moves its outputs a little).
    got = predict_tasks(model, texts, [None, "agnews"], batch_size=32)
    want = [model.predict(texts, batch_size=32), model.predict(texts, task="agnews", batch_size=32)]
    diff = max(abs(g["scores"][k] - w["scores"][k]) for gs, ws in zip(got, want) for g, w in zip(gs, ws)
               for k in g["scores"])
    agree = np.mean([g["label"] == w["label"] for gs, ws in zip(got, want) for g, w in zip(gs, ws)])
    return {"max_prob_diff": float(diff), "label_agreement": float(agree)}


def screenshot(monitor_dir: Path, config: Path, model: Any, dest: Path) -> bool:
    chromium = shutil.which("chromium")
    if chromium is None:
        log.warning("no chromium: no dashboard screenshot")
        return False
    import socket

    import uvicorn

    from lepton.monitor.app import create_app

    monitor = monitor_for(model, config, monitor_dir)  # the finished run's store, read back
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(monitor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    time.sleep(2)
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1500,1250",
                               f"--screenshot={dest}", f"http://127.0.0.1:{port}/"],
                              capture_output=True, text=True, timeout=120)
    server.should_exit = True
    thread.join(10)
    monitor.stop()
    return done.returncode == 0


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "n": len(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="runs/monitor-news/model")
    p.add_argument("--int8", default="runs/monitor-news-int8/model")
    p.add_argument("--data", default="runs/monitor-news-stream", help="the stream builder's output folder")
    p.add_argument("--config", default="examples/monitor-news-monitor.yaml")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=2000, help="items per throughput round")
    p.add_argument("--rate", type=float, default=15.0, help="items/s of the paced latency run")
    p.add_argument("--no-latency", action="store_true", help="skip the paced latency runs")
    p.add_argument("--detect", nargs="*", default=["int8"], choices=["fp32", "int8"],
                   help="models that replay the whole stream for detection (default: %(default)s)")
    p.add_argument("--latency-items", type=int, default=2400)
    p.add_argument("--name", default="monitor", help="results file name (default: %(default)s)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("lepton.monitor.engine").setLevel(logging.ERROR)  # alert lines: in the results

    import torch

    import lepton
    from lepton.evaluation.environment import fingerprint

    data, config, out = Path(args.data), Path(args.config), Path(args.out)
    truth = json.loads((data / "truth.json").read_text())
    stream = data / "stream.jsonl"
    lines = stream.read_text(encoding="utf-8").splitlines(keepends=True)
    work = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    models = {"fp32": lepton.load(args.model), "int8": lepton.load(args.int8)}
    texts = [json.loads(line)["text"] for line in lines[:64]]
    import os

    results: dict[str, Any] = {"settings": vars(args), "threads": torch.get_num_threads(),
                               "cpus_allowed": sorted(os.sched_getaffinity(0)),
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                               "environment": fingerprint(0).model_dump(mode="json"),
                               "stream": {k: truth[k] for k in ("items", "background", "surge_items", "pools")},
                               "models": {}}
    for name, model in models.items():
        results["models"][name] = {"runtime": model.manifest.get("runtime"), "parity": parity(model, texts)}
        log.info("%s one-pass parity: %s", name, results["models"][name]["parity"])

    # 1. Throughput: interleaved rounds on the same slice.
    chunk = work / "chunk.jsonl"
    chunk.write_text("".join(lines[:args.chunk]), encoding="utf-8")
    rounds: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(args.rounds):
        for name, model in models.items():
            run = replay(model, config, chunk, work / f"tp-{name}")
            rounds[name].append(run["items_per_s"])
            log.info("round %d %s: %.1f items/s", r, name, run["items_per_s"])
    for name in models:
        results["models"][name]["throughput_items_s"] = {
            "median": round(statistics.median(rounds[name]), 1), "rounds": [round(x, 1) for x in rounds[name]]}
    results["int8_over_fp32_throughput"] = round(statistics.median(
        [i / f for i, f in zip(rounds["int8"], rounds["fp32"])]), 2)

    # 2. Latency at a paced rate both sustain (stream time compressed to --rate items/s).
    span = truth["end"] - truth["start"]
    speed = args.rate * span / truth["items"]
    paced = work / "paced.jsonl"
    paced.write_text("".join(lines[:args.latency_items]), encoding="utf-8")
    for name, model in models.items():
        if args.no_latency:
            break
        run = replay(model, config, paced, work / f"lat-{name}", speed=speed)
        results["models"][name]["latency_at_rate"] = {"rate_items_s": args.rate,
                                                      "achieved_items_s": round(run["items_per_s"], 1),
                                                      **percentiles(run["latencies"])}
        log.info("%s latency: %s", name, results["models"][name]["latency_at_rate"])

    # 3. Detection: the whole stream, as fast as it goes.
    for name, model in models.items():
        if name not in args.detect:
            continue
        run = replay(model, config, stream, work / f"full-{name}")
        m = run["monitor"]
        results["models"][name]["full_replay"] = {"items": run["items"], "seconds": round(run["seconds"], 1),
                                                  "items_per_s": round(run["items_per_s"], 1),
                                                  "latency_saturated": percentiles(run["latencies"])}
        results["models"][name]["detection"] = detection(m, truth)
        results["models"][name]["quality"] = quality(m, truth)
        results["models"][name]["alerts"] = m.store.alerts(limit=1000)
        m.store.close()
        log.info("%s detection: %s", name, json.dumps(results["models"][name]["detection"])[:600])
    out.mkdir(parents=True, exist_ok=True)
    shot = "int8" in args.detect and screenshot(work / "full-int8", config, models["int8"],
                                                out / f"{args.name}_dashboard.png")
    results["screenshot"] = f"{args.name}_dashboard.png" if shot else None
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2, default=str))
    (out / f"{args.name}.md").write_text(render(results, platform.processor() or ""))
    print((out / f"{args.name}.md").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0


def render(r: dict[str, Any], _: str) -> str:
    env = r["environment"]
    lines = ["# Monitor benchmark: news stream with injected negative surges", "",
             f"Machine: {env['cpu_model']} ({', '.join(env['cpu_flags'])}), {r['threads']} thread(s) for the models "
             f"(process allowed on CPU(s) {r['cpus_allowed']} of {env['cores_logical']}, OMP_NUM_THREADS="
             f"{r['omp_num_threads']}), torch {env['packages'].get('torch', '?')}, onnxruntime "
             f"{env['packages'].get('onnxruntime', '?')}. The machine was shared with other work while this ran: "
             "absolute rates vary, the interleaved ratio is the figure to read. "
             f"Stream: {r['stream']['items']:,} items ({r['stream']['background']:,} background, "
             f"{r['stream']['surge_items']} injected in 4 surges), built by `examples/monitor_news_stream.py`.", "",
             "| | PyTorch fp32 | ONNX Runtime INT8 |", "|---|---|---|"]
    f, i = r["models"]["fp32"], r["models"]["int8"]

    def row(label: str, get: Any) -> None:
        cells = []
        for m in (f, i):
            try:
                cells.append(str(get(m)))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")

    row("one-pass vs predict(task) per task: label agreement, max prob diff",
        lambda m: f"{m['parity']['label_agreement']:.3f}, {m['parity']['max_prob_diff']:.1e}")
    row("sustained ingest, items/s (median of rounds)",
        lambda m: f"{m['throughput_items_s']['median']} ({', '.join(map(str, m['throughput_items_s']['rounds']))})")
    row("ingest to stored, p50 / p99 ms at a paced rate",
        lambda m: f"{m['latency_at_rate']['p50_ms']} / {m['latency_at_rate']['p99_ms']} "
                  f"(at {m['latency_at_rate']['rate_items_s']}/s, "
                  f"achieved {m['latency_at_rate']['achieved_items_s']}/s, "
                  f"n {m['latency_at_rate']['n']})")
    row("full replay, items/s", lambda m: f"{m['full_replay']['items_per_s']} ({m['full_replay']['seconds']} s)")
    row("ingest to stored, p50 / p99 ms in the full replay (queue always full)",
        lambda m: f"{m['full_replay']['latency_saturated']['p50_ms']} / "
                  f"{m['full_replay']['latency_saturated']['p99_ms']}")
    row("topic accuracy on the stream's AG News items", lambda m: m["quality"]["topic_accuracy_agnews_items"])
    row("sentiment accuracy on its PhraseBank items", lambda m: m["quality"]["sentiment_accuracy_phrasebank_items"])
    row("surge items predicted Business + negative", lambda m: m["quality"]["surge_items_predicted_business_negative"])
    row("alerts / false alarms", lambda m: f"{m['detection']['alerts']} / {m['detection']['false_alarms']}")
    row("false alarms per 10,000 items", lambda m: m["detection"]["false_alarms_per_10k_items"])
    row("alerts on other topics during surges", lambda m: m["detection"]["off_topic_alerts_during_surges"])
    row("topic windows tested (the rule's level is alpha per tested window)",
        lambda m: m["detection"]["windows_tested"])
    lines += ["", f"INT8 / fp32 sustained ingest throughput: **{r['int8_over_fp32_throughput']}x** "
              "(median of the per-round ratios, rounds interleaved on the same items).", ""]
    for name, m in (("PyTorch fp32", f), ("ONNX Runtime INT8", i)):
        if "detection" not in m:
            continue
        d = m["detection"]
        lines += [f"Detection with the {name} model: delay per surge (stream time from the surge's start to "
                  "the end of the 10-minute window whose test opened the alert; the alert is raised when that "
                  "window closes):", "", "| surge | injected | detected | delay | peak vs baseline negative share |",
                  "|---|---|---|---|---|"]
        for s_ in d["surges"]:
            shares = (f"{s_['peak_share']:.0%} vs {s_['baseline_share']:.0%}"
                      if s_["detected"] and s_["baseline_share"] is not None else "-")
            delay = f"{s_['delay_min']} min" if s_["detected"] else "-"
            lines.append(f"| {s_['surge']} | +{s_['per_minute']}/min negative for {s_['minutes']} min "
                         f"({s_['items']} items) | {'yes' if s_['detected'] else 'missed'} | {delay} | {shares} |")
        lines += ["", f"False alarms (alerts matching no surge by time and topic): {d['false_alarms']} "
                  f"({', '.join(d['false_alarm_topics']) or 'none'}), {d['false_alarms_per_10k_items']} per 10,000 "
                  f"items.", ""]
    if r.get("screenshot"):
        lines += [f"![dashboard]({r['screenshot']})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
