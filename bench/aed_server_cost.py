"""Server-side cost of finishing a Conformer-AED handoff: time per window of greedy CTC, the attention beam search
and the beam search with LM rescoring, p50/p95, and the tokens and WER each answers with.

    nice -n 19 .venv/bin/python bench/aed_server_cost.py --bundle DIR                 # 100 test utterances
    nice -n 19 .venv/bin/python bench/aed_server_cost.py --bundle DIR --n 300 --seed 1
    nice -n 19 .venv/bin/python bench/aed_server_cost.py --bundle DIR --wav a.flac b.wav --refs manifest.jsonl

DIR is a bundle of a conformer-aed model with a server part (`eeasr-convert AED_MODEL --exits K --out DIR`,
with `--lm LMRUN` for the third decoder; a bundle without an LM gets two rows, a CTC-only bundle one). Its audio
options and windows are bench/gated_cost.py's: --wav files (--refs: their transcripts), or a fixed seeded
subset of --n utterances of a corpus split (default ~/.cache/eeasr/corpus, test), cut into device windows as
`eeasr-train eval` cuts them.

Every window runs the bundle's device program (eeasr.device_program under the real TFLM interpreter, every
device segment) and its handoff, dequantized as the server does, goes through host/server.py's `Suffix`
components one window at a time (batch 1: the latency a lone device sees): the server ONNX for the remaining
encoder layers (timed once per window, shared by the decoders), then each decoder on its output:
- ctc: greedy CTC on the last exit's log-probabilities (what an early-exit bundle's server answers);
- attention: the last exit's attention decoder, beam search with the bundle's beam (eeasr/aed_decode.py);
- attention+lm: the same N-best rescored by the bundle's LM (what `eeasr-host serve` answers for this bundle).
Times are wall time on this host with --threads onnxruntime threads. WER when the utterances have
references: each decoder's window texts joined per utterance. Writes aed_server_cost.md and aed_server_cost.csv
under --out.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from gated_cost import add_audio_args, load_windows, log  # noqa: E402
from report import parser, write_tables  # noqa: E402

from eeasr.bundle import load_bundle  # noqa: E402
from eeasr.metrics import wer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser(__doc__)
    ap.add_argument("--bundle", type=Path, required=True, help="a conformer-aed bundle with a server part")
    add_audio_args(ap)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output directory (default: bench/out)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/aed_server_cost.py", *map(str, given)])

    from tqdm import tqdm

    from eeasr.aed_decode import AttentionDecoder
    from eeasr.device_program import DeviceProgram
    from eeasr.exits import greedy_ctc
    from eeasr.features import dequantize_int8
    from eeasr.host.device_sim import MIN_WINDOW_FRAMES
    from eeasr.host.server import Suffix
    from eeasr.server_model import SERVER_OUTPUT_MEMORY

    bundle = load_bundle(args.bundle)
    if not bundle.manifest.get("server"):
        raise SystemExit(f"{bundle.path}: every exit is on the device (no server part); convert with fewer --exits")
    program = DeviceProgram.from_bundle(bundle)
    suffix = Suffix(bundle, args.threads)
    decoders: dict[str, AttentionDecoder | None] = {"ctc": None}
    att = suffix.decoder
    if att is not None:   # the bundle's own decoder, and the same search without its LM
        decoders["attention"] = AttentionDecoder(att.decoder, suffix.tokenizer.vocab_size, att.beam, att.length_norm,
                                                 att.max_len_ratio)
        if att.lm is not None:
            decoders["attention+lm"] = att
    items, what = load_windows(args, bundle)
    n_windows = sum(len(it.windows) for it in items)
    enc_ms: list[float] = []
    dec_ms: dict[str, list[float]] = {k: [] for k in decoders}
    tokens: dict[str, list[int]] = {k: [] for k in decoders}
    texts = {k: {it.id: [] for it in items} for k in decoders}
    def finish(hidden: np.ndarray) -> tuple[float, dict[str, tuple[float, list[int]]]]:
        """One handoff [1, T, d]: the server ONNX's ms, and each decoder's ms and tokens."""
        lengths = np.array([hidden.shape[1]], np.int64)
        t = time.perf_counter()
        outs = suffix.model(hidden, lengths)
        enc = 1000 * (time.perf_counter() - t)
        got = {}
        for name, dec in decoders.items():
            t = time.perf_counter()
            if dec is None:
                tok = greedy_ctc(outs[suffix.output][0, :lengths[0]])
            else:
                tok = dec.decode(outs[SERVER_OUTPUT_MEMORY], lengths)[0].tokens
            got[name] = (1000 * (time.perf_counter() - t), tok)
        return enc, got

    warm = False
    for it in tqdm(items, desc="windows", unit="utt", disable=not args.progress):
        for w in it.windows:
            if len(w) < MIN_WINDOW_FRAMES:   # the device answers it empty, nothing goes up
                continue
            out = program.run(*program.quantize_features(w))
            qp = out.hidden_qparams
            hidden = dequantize_int8(out.hidden_q, qp.scale, qp.zero_point)[None]
            if not warm:   # onnxruntime's first run of a session allocates and plans: not a window's cost
                finish(hidden)
                warm = True
            enc, got = finish(hidden)
            enc_ms.append(enc)
            for name, (ms, tok) in got.items():
                dec_ms[name].append(ms)
                tokens[name].append(len(tok))
                texts[name][it.id].append(suffix.tokenizer.decode(tok))
    if not enc_ms:
        raise SystemExit("no window long enough to run")
    scored = [it for it in items if it.ref is not None]
    rows = []
    e50, e95 = percentiles(enc_ms)
    for name in decoders:
        total = [e + d for e, d in zip(enc_ms, dec_ms[name])]
        d50, d95 = percentiles(dec_ms[name])
        t50, t95 = percentiles(total)
        rows.append({"decoder": name, "windows": len(enc_ms), "encoder_p50_ms": round(e50, 3),
                     "encoder_p95_ms": round(e95, 3), "decode_p50_ms": round(d50, 3), "decode_p95_ms": round(d95, 3),
                     "total_p50_ms": round(t50, 3), "total_p95_ms": round(t95, 3),
                     "tokens_per_window": round(float(np.mean(tokens[name])), 2),
                     "wer": round(wer([it.ref for it in scored],
                                      [" ".join(x for x in texts[name][it.id] if x) for it in scored]), 2)
                     if scored else None})
    dec = bundle.manifest["server"].get("decoder") or {}
    lm = dec.get("lm")
    head = (f"Server-side finish of handoffs, bundle {bundle.path} (model {bundle.model_hash}, EXITS="
            f"{bundle.device_exits}: server layers {suffix.after_layer + 1}-{suffix.layer}"
            + (f", beam {dec['beam']}" if dec else "") + (f", LM weight {lm['weight']}" if lm else "")
            + f"), {what}: {len(items)} utterances, {len(enc_ms)} of {n_windows} windows long enough to run "
            f"(W={bundle.window}). One window at a time, onnxruntime with {args.threads} thread(s), wall time on "
            f"this host; total = the server ONNX's remaining encoder layers + the decoder.\n\n`{command}`\n\n")
    lines = ["| decoder | windows | encoder ms p50 / p95 | decode ms p50 / p95 | total ms p50 / p95 | tokens / window "
             "| WER % |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['decoder']} | {r['windows']} | {r['encoder_p50_ms']:.2f} / {r['encoder_p95_ms']:.2f} "
                     f"| {r['decode_p50_ms']:.2f} / {r['decode_p95_ms']:.2f} | {r['total_p50_ms']:.2f} / "
                     f"{r['total_p95_ms']:.2f} | {r['tokens_per_window']:.1f} | "
                     f"{'-' if r['wer'] is None else format(r['wer'], '.1f')} |")
    text = head + "\n".join(lines) + "\n"
    write_tables(args.out, "aed_server_cost", text, rows)
    log(f"wrote {args.out}/aed_server_cost.md, aed_server_cost.csv")
    return rows


if __name__ == "__main__":
    main()
