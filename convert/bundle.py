"""Writing a bundle: the manifest (schema and reader in eeasr/bundle.py, which the host imports without torch
or tensorflow), the files, and their hashes. A bundle is written into a temporary directory beside `out` and
renamed into place, so a failed conversion never leaves a half-written bundle behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from eeasr.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, Bundle, load_bundle, sha256_bytes, sha256_file


def model_sections(ck: Any, checkpoint: Path, ck_files: dict[str, str], tokenizer_sha: str,
                   window: int) -> dict[str, Any]:
    """The manifest's model, features, window and tokenizer sections: the same for every model family."""
    cfg = ck.cfg.model
    return {
        "model": {"hash": ck.model_hash, "checkpoint": str(checkpoint), "checkpoint_files": ck_files,
                  "encoder": cfg.encoder, "n_layers": cfg.exits[-1], "d_model": cfg.d_model, "n_heads": cfg.n_heads,
                  "vocab_size": cfg.vocab_size, "blank": 0, "exit_layers": list(cfg.exits)},
        "features": {"config": ck.features.to_dict(), "hash": ck.features.hash(),
                     "norm": {"mean": [float(v) for v in ck.norm.mean], "std": [float(v) for v in ck.norm.std]}},
        "window": {"frames": window, "encoder_frames": window // 4, "subsampling": cfg.subsampling,
                   "mask_bias": cfg.mask_bias},
        "tokenizer": {"file": "tokenizer.model", "sha256": tokenizer_sha, "vocab_size": ck.tokenizer.vocab_size},
    }


def bundle_id(model_hash: str, k: int, file_hashes: dict[str, str], thresholds: dict[str, Any]) -> str:
    """Identifies one conversion: the model, EXITS, the device/server model files and the thresholds."""
    blob = json.dumps({"model": model_hash, "exits": k, "files": dict(sorted(file_hashes.items())),
                       "thresholds": thresholds}, sort_keys=True)
    return sha256_bytes(blob.encode())[:32]


def prepare_out(out: Path) -> None:
    """`out` may be absent, empty, or an earlier bundle (replaced); anything else is refused."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST).exists():
            raise FileExistsError(f"{out} is not empty and holds no bundle; choose another --out")


def write_bundle(out: Path, manifest: dict[str, Any], files: dict[str, bytes],
                 firmware: Any | None = None) -> Bundle:
    """Write `files` (relative path -> bytes), then the firmware sources (`firmware(dir, manifest)` writes them
    into dir/firmware), hash everything into manifest["files"], write manifest.json, move into place, and
    load the result back through the verifying reader."""
    out = Path(out)
    prepare_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is an ordinary directory
    try:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **manifest}
        if firmware is not None:
            firmware(tmp / "firmware", manifest)
        manifest["files"] = {str(p.relative_to(tmp)): sha256_file(p)
                             for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out)


__all__ = ["write_bundle", "bundle_id", "prepare_out"]
