"""`mllm-audit`: serve the API, or audit one image in-process.

    mllm-audit serve [--model DIR] [--host H] [--port P] [--workers N] ...
    mllm-audit explain --image FILE --prompt TEXT --answer TEXT [--method eagle] [--overlay out.png]
    mllm-audit reliance --image FILE --prompt TEXT --answer TEXT
    mllm-audit calibrate --labelled FILE --out risk_calibration.json [--model DIR] [--verify]
    mllm-audit audit DATA --out results.jsonl [--url URL | --model DIR] [--concurrency 8] [--resume]
    mllm-audit report RESULTS.jsonl --html report.html   # saved /v1/* responses or audit results
    mllm-audit check SUITE.yaml [--url URL | --model DIR] [--junit report.xml] [--json report.json]
    mllm-audit openapi            # the served OpenAPI document as YAML (same as python -m mllm_audit.service.openapi)

Every `serve` flag has an MLLM_AUDIT_* environment variable (service.config); a flag given on
the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

from mllm_audit.service.config import ENV_VARS, Settings, env_name

# Every setting is a `serve` flag; `explain` and `reliance` take those about the model and the limits.
SERVE_FLAGS = tuple(f.name for f in fields(Settings))
MODEL_FLAGS = (
    "model",
    "model_id",
    "device",
    "dtype",
    "backend",
    "onnx_cache",
    "trust_remote_code",
    "forward_batch_size",
    "cpu_threads",
    "max_regions",
    "max_forward_passes",
    "max_image_pixels",
    "max_heatmap_pixels",
    "max_prompt_tokens",
    "max_answer_tokens",
    "risk_medium",
    "risk_high",
    "risk_calibration",
    "log_level",
)
# `calibrate` runs the model in-process like `explain`; thresholds and the calibration file are its output
CALIBRATE_FLAGS = tuple(
    name
    for name in MODEL_FLAGS
    if not name.startswith(("max_regions", "max_forward", "max_image", "max_heatmap", "risk_"))
)


def _add_setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    by_name = {f.name: f for f in fields(Settings)}
    for name in names:
        f = by_name[name]
        flag = "--" + name.replace("_", "-")
        help_text = f"{f.metadata['doc']} [env {env_name(name)}, default {f.default!r}]"
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=type(f.default), default=None, help=help_text)


def _settings(args: argparse.Namespace, names: tuple[str, ...]) -> Settings:
    return Settings.from_env(**{name: getattr(args, name) for name in names})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mllm-audit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the REST service")
    _add_setting_flags(serve, SERVE_FLAGS)

    for name, help_text in (
        ("explain", "attribution masks, reliance and risk for one image, printed as JSON"),
        ("reliance", "reliance and risk per answer token for one image, printed as JSON"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--image", required=True, type=Path, help="image file (PNG, JPEG, WebP, GIF, BMP)")
        p.add_argument("--prompt", required=True)
        p.add_argument("--answer", required=True)
        if name == "explain":
            from mllm_audit.explainers.methods import METHODS
            from mllm_audit.explainers.request import DEFAULT_METHOD

            p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS)
            p.add_argument("--regions", type=int, default=None, help="superpixels (default 64, capped at the limit)")
            p.add_argument(
                "--targets",
                default="answer",
                help='"answer", "tokens", or spans as START:END[,START:END...] (answer characters)',
            )
            p.add_argument("--budget", dest="budget", type=int, default=None, help="max forward passes")
            p.add_argument(
                "--heatmap", default="array", choices=("png", "array", "none"), help="heatmap encoding in the JSON"
            )
            p.add_argument(
                "--heatmap-kind",
                default=None,
                choices=("gain", "cumulative", "activation"),
                help="what the map shows (default: the method's: gain for EAGLE, activation for white-box)",
            )
            p.add_argument(
                "--overlay",
                type=Path,
                default=None,
                help="also write the first target's heatmap over the image (colour bar, target text) to this PNG",
            )
        p.add_argument("--output", type=Path, default=None, help="write the JSON here instead of stdout")
        _add_setting_flags(p, MODEL_FLAGS)

    from mllm_audit.service import calibrate as calibrate_module

    calibrate = sub.add_parser(
        "calibrate",
        help="fit the risk calibration of a model on labelled claims (docs/risk.md)",
        description=calibrate_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate_module.add_arguments(calibrate)
    _add_setting_flags(calibrate, CALIBRATE_FLAGS)

    from mllm_audit.service import audit_run, suite

    for name, module in (("audit", audit_run), ("check", suite)):  # in-process unless --url; docs/ci.md
        p = sub.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        _add_setting_flags(p, MODEL_FLAGS)

    from mllm_audit.service import saved_responses

    report = sub.add_parser("report", help=saved_responses.HELP, description=saved_responses.__doc__)
    saved_responses.add_arguments(report)

    sub.add_parser("openapi", help="print the OpenAPI document (YAML) the service serves")
    env = sub.add_parser("env", help="list the MLLM_AUDIT_* environment variables")
    env.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/configuration.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(_settings(args, SERVE_FLAGS))
        if args.command in ("explain", "reliance"):
            return audit_one(args, _settings(args, MODEL_FLAGS))
        if args.command == "calibrate":
            return run_calibrate(args, _settings(args, CALIBRATE_FLAGS))
        if args.command in ("audit", "check"):
            from mllm_audit.service import audit_run, suite

            return (audit_run if args.command == "audit" else suite).main(args, _settings(args, MODEL_FLAGS))
        if args.command == "report":
            from mllm_audit.service import saved_responses

            return saved_responses.main(args)
        if args.command == "openapi":
            from mllm_audit.service.openapi import document_yaml

            sys.stdout.write(document_yaml())
            return 0
        if args.command == "env":
            if args.markdown:
                sys.stdout.write(env_table())
                return 0
            for name, (default, doc) in ENV_VARS.items():
                print(f"{name}={default!r}\t{doc}")
            return 0
    except ValueError as exc:  # bad settings, unreadable model directory, bad input
        print(f"mllm-audit: error: {exc}", file=sys.stderr)
        return 2
    return 1


def env_table() -> str:
    """The settings as a Markdown table (docs/configuration.md holds this output; a test keeps it current)."""
    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for name, (default, doc) in ENV_VARS.items():
        field_name = name.removeprefix("MLLM_AUDIT_").lower()
        flag = f"`--{field_name.replace('_', '-')}`"
        shown = '`""`' if default == "" else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| `{name}` | {flag} | {shown} | {doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def serve(settings: Settings) -> int:
    from mllm_audit.models.loading import ModelLoadError
    from mllm_audit.service.server import model_block

    try:  # a bad model directory fails here, before any process starts
        model = model_block(settings)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    from mllm_audit.service.calibrate import risk_block, service_calibration

    # so does a calibration file that does not parse, is for another model or needs a signal it cannot give
    # (CalibrationError is a ValueError: one line naming the file, exit 2)
    risk = risk_block(service_calibration(settings, model["id"], model["family"]))
    # Before anything imports prometheus_client (all processes of the server inherit it).
    from mllm_audit.service import logs, metrics

    metrics.configure(settings.metrics_dir, clear=True)
    logs.configure(settings.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mllm_audit.service.server import AuditServer

    server = AuditServer(settings, model, risk)
    # SIGTERM (docker stop, Kubernetes) drains: queued requests get 503, running ones finish within
    # MLLM_AUDIT_DRAIN_TIMEOUT, then every process stops. Before the service is up, or at a second
    # SIGTERM, it stops at once like Ctrl+C.
    main_pid = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != main_pid:  # a forked API server inherited this handler: die as SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not server.drain():
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    logs.get("mllm_audit").info(
        "starting",
        host=settings.host,
        port=settings.port,
        model=server.model,
        api_servers=settings.api_servers,
        workers=settings.workers,
        max_batch_size=settings.max_batch_size,
        auth=bool(settings.api_key),
        metrics_dir=metrics.multiprocess_dir(),
    )
    server.serve()
    return 0


def audit_one(args: argparse.Namespace, settings: Settings) -> int:
    """One audit in this process: no server, same code path as a worker."""
    import base64
    import math
    import time

    from mllm_audit.service.api import AuditAPI, Envelope, Failure

    if not args.image.is_file():
        raise ValueError(f"image file {args.image} does not exist")
    body = {"image": base64.b64encode(args.image.read_bytes()).decode(), "prompt": args.prompt, "answer": args.answer}
    if args.command == "explain":
        body.update(
            method=args.method,
            targets=_parse_targets(args.targets),
            max_forward_passes=args.budget,
            heatmap={"encoding": args.heatmap, **({"kind": args.heatmap_kind} if args.heatmap_kind else {})},
        )
        if args.regions is not None:  # given, it is checked against the limit as a request's would be
            body["regions"] = args.regions
    from mllm_audit.service.schemas import ExplainRequest, RelianceRequest

    model = ExplainRequest if args.command == "explain" else RelianceRequest
    try:
        validated = model.model_validate(body)
    except Exception as exc:  # pydantic's message names the field
        raise ValueError(str(exc)) from None
    from mllm_audit.service import logs

    logs.configure(settings.log_level, stream=sys.stderr)  # stdout is for the JSON
    from mllm_audit.service.images import ImageError, decode_image

    try:  # a bad image fails before the model loads
        decode_image(body["image"], settings.max_image_pixels)
    except ImageError as exc:
        print(f"mllm-audit: error {exc.status}: {exc.detail}", file=sys.stderr)
        return 1
    from mllm_audit.models.loading import ModelLoadError, choose_device

    api = AuditAPI(settings)
    api.configure_logs = False
    try:
        api.setup(str(choose_device(settings.device)))
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    # in-process there is no client to time out: no deadline
    envelope = Envelope(
        args.command,
        "cli",
        time.monotonic(),
        math.inf,
        validated.model_dump(mode="json"),
        frozenset(validated.model_fields_set),
    )
    decoded = api.decode_request(envelope)
    output = api.encode_response(api.predict([decoded])[0])
    if isinstance(output, Failure):
        print(f"mllm-audit: error {output.status}: {output.detail}", file=sys.stderr)
        return 1
    data, _ = output
    result = json.loads(data)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    if args.command == "explain" and args.overlay:
        write_overlay(decoded.request.image, result, args.overlay)
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    return 0


def run_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from mllm_audit.models.loading import ModelLoadError
    from mllm_audit.service import logs
    from mllm_audit.service.api import cpu_threads
    from mllm_audit.service.calibrate import calibrate
    from transformers.utils import logging as hf_logging

    logs.configure(settings.log_level, stream=sys.stderr)
    torch.set_num_threads(cpu_threads(settings))
    hf_logging.disable_progress_bar()  # the progress line is the command's own
    try:
        return calibrate(args, settings)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None


def _parse_targets(text: str):
    if text in ("answer", "tokens"):
        return text
    spans = []
    for part in text.split(","):
        start, sep, end = part.partition(":")
        if not sep:
            raise ValueError(f"--targets: {part!r} is not START:END")
        spans.append({"start": int(start), "end": int(end)})
    return spans


def write_overlay(image, result: dict, path: Path) -> None:
    """The first attribution's heatmap over the image with a colour bar, its target text and its kind."""
    import base64
    import io

    import numpy as np
    from mllm_audit.explainers.heatmap_kinds import figure_caption
    from mllm_audit.explainers.overlay import heatmap_figure
    from PIL import Image

    attributions = result.get("attributions") or []
    if not attributions or not attributions[0].get("heatmap"):
        raise ValueError("no heatmap to overlay (use --heatmap array or png)")
    first = attributions[0]
    heat = first["heatmap"]
    if heat["encoding"] == "array":
        values = np.asarray(heat["data"], dtype=np.float32)
    else:
        values = np.asarray(Image.open(io.BytesIO(base64.b64decode(heat["data"]))), dtype=np.float32) / 255.0
    box = tuple(first["regions"][0]["bbox"]) if first.get("regions") else None
    title, note = figure_caption(first["target"]["text"], heat.get("kind", "gain"), heat.get("flat_reason"))
    heatmap_figure(image, values, title, note, box).save(path, format="PNG")


if __name__ == "__main__":
    sys.exit(main())
