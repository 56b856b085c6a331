"""Wav2Vec2-CTC with early exits (paper 1's third model): a pretrained Hugging Face Wav2Vec2 encoder fine-tuned with
a CTC exit after chosen transformer layers (every 2nd in configs/wav2vec2.yaml) and the joint loss of Eq. 2.

Unlike the Conformer families this model reads the raw 16 kHz waveform, not the cached log-mel features, and it is
a server-side model only (nothing of it is converted for the device). The choices:

- Input: `forward(feats, n_frames)` keeps the Recognizer signature with `feats` = waveform [B, S] (int16 / 32768,
  zero past each item's end) and `n_frames` = valid samples [B]. forward normalizes each waveform to zero mean and
  unit variance over its valid samples, as Wav2Vec2FeatureExtractor(do_normalize=True) does for the
  facebook/wav2vec2-base* checkpoints, so that every caller feeds the encoder the same thing.
- Exits: the encoder's hidden states (`output_hidden_states`) after the layers in `cfg.exits`, each through its own
  dropout (`final_dropout`, as Wav2Vec2ForCTC) + Linear head + log_softmax. Layers past the last exit are dropped.
  Pre-LN ("stable layer norm", the large checkpoints) normalize the residual stream only after the last layer, so
  there every exit reads `encoder.layer_norm(h)` (the last exit thus reads exactly the model's output). LayerDrop is
  off: a skipped layer would leave its exit without an input. `upto` selects exits only; the encoder runs all its
  kept layers (the Hugging Face forward has no early stop, and this model never runs split on a device).
- Valid lengths: `_get_feat_extract_output_lengths(valid samples)`; the attention mask built from the valid samples
  keeps padded frames out of attention (the encoder also zeroes them before its positional convolution).
- Padding: with a "layer"-norm feature extractor (large/lv60 checkpoints) valid outputs do not depend on padding
  (float rounding only). The "group"-norm extractor of wav2vec2-base normalizes its first convolution over the whole
  padded input, so padding shifts every frame a little: training batches are bucketed by length to keep padding
  small (as fairseq and Hugging Face fine-tuning do), and evaluation decodes such models one utterance at a time so
  that a WER never depends on which utterances shared a batch (`eval_batch_samples`).
- Units: `GraphemeTokenizer`, the 32 units (and ids) of the official wav2vec2 CTC recipe.
- Pretrained weights: `cfg.wav2vec2.pretrained` is a local directory written by `save_pretrained` holding a
  Wav2Vec2Model (e.g. facebook/wav2vec2-base) or a Wav2Vec2ForCTC (e.g. facebook/wav2vec2-base-960h, where the paper
  started). When it is a Wav2Vec2ForCTC whose vocab.json is exactly our inventory, every exit head starts as its own
  copy of that CTC layer (the paper's code did the same); otherwise the heads start random. "" builds a randomly
  initialized encoder shaped by d_model/n_heads/ff_dim/n_layers/dropout with the wav2vec2-base convolutions.
- Training: `fit_wav2vec2`, to which `trainer.fit` dispatches for encoder "wav2vec2". It runs the trainer's loop
  (train/loop.py: step-seeded and resumable, AdamW + `lr_at`, length buckets, train_log.csv, per-epoch dev WER
  through `evaluate_greedy`, the final checkpoint average) and differs only where the input does: waveforms are read
  from the corpus manifest per batch with eeasr.audio.load_audio (no feature cache: a large corpus does not fit in
  memory), `max_batch_frames` counts 10 ms frames of padded audio, and the log-mel SpecAugment is replaced by the
  checkpoint's own latent time masking (`mask_time_prob` in its config.json), whose numpy draws are seeded per step as well.
- Run directory: config.yaml (shape written back from the checkpoint), wav2vec2.json (the Hugging Face config of
  the model as built), train_log.csv, checkpoints/, and model.pt in checkpoint.save_model's layout with the unit
  inventory in its meta; `load_run` rebuilds the model from these without the pretrained directory. There is no
  tokenizer.model, norm.json or features.json: the log-mel checkpoint loader (`eeasr-train eval|exits|export`)
  does not apply to these runs; `wer_per_exit` scores them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from eeasr.audio import SAMPLE_RATE, load_audio
from eeasr.exits import BLANK
from eeasr.manifest import Utterance, read_manifest
from eeasr.text import normalize_text
from eeasr.train.config import ModelConfig, TrainConfig, load_config, save_config
from eeasr.train.dataset import Batch, bucket_batches
from eeasr.train.model import ENCODERS, Recognizer, valid_mask

if TYPE_CHECKING:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

# train/model.py imports this module (to register the encoder) before its own end, while checkpoint.py and
# trainer.py may be half-imported (both import model.py): what they and model.py's end define is imported where it
# is used. So is transformers: it is an optional extra, and importing it costs ~1.5 s.

# The 32 output units of the official wav2vec2 CTC recipe: facebook/wav2vec2-base-960h's vocab.json, lowercased, in
# its id order (paper 1: 28 characters + blank + 2 sentence boundaries + unknown). 0 is the CTC blank ("<pad>"
# there, eeasr.exits.BLANK here), "|" the word boundary; letters follow by English frequency.
GRAPHEMES: tuple[str, ...] = ("<blank>", "<s>", "</s>", "<unk>", "|", *"etaonihsrdlumwcfgypbvk", "'", *"xjqz")
WORD_BOUNDARY = GRAPHEMES.index("|")
SAMPLES_PER_FRAME = 160          # cfg.data.max_batch_frames counts 10 ms frames of padded audio
HF_CONFIG = "wav2vec2.json"      # the run's Hugging Face config, beside config.yaml
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class GraphemeTokenizer:
    """Text <-> the 32 grapheme units above, with what train/ uses of eeasr.tokenizer.Tokenizer (encode, decode,
    vocab_size, blank_id).

    `encode` runs eeasr.text.normalize_text first (a-z, inner apostrophes, single spaces), so <s>, </s> and <unk>
    never occur in targets; they are kept so that ids match the CTC layer of the official checkpoints. `decode`
    skips them and the blank, so decode(encode(x)) == normalize_text(x).
    """

    _ids = {u: i for i, u in enumerate(GRAPHEMES) if len(u) == 1 and u != "|"} | {" ": WORD_BOUNDARY}

    @property
    def vocab_size(self) -> int:
        return len(GRAPHEMES)

    @property
    def blank_id(self) -> int:
        return BLANK

    def encode(self, text: str) -> list[int]:
        return [self._ids[c] for c in normalize_text(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Unit ids to text; blanks and the special units are skipped, so a collapsed CTC path can be passed."""
        chars = []
        for i in ids:
            if not 0 <= i < len(GRAPHEMES):
                raise ValueError(f"unit id {i} out of range [0, {len(GRAPHEMES)})")
            if i >= WORD_BOUNDARY:
                chars.append(" " if i == WORD_BOUNDARY else GRAPHEMES[i])
        return " ".join("".join(chars).split())

    def piece(self, unit_id: int) -> str:
        return GRAPHEMES[unit_id]


def _same_units(vocab: dict) -> bool:
    """Whether a Hugging Face CTC vocab.json is our inventory (case aside) in our id order."""
    if not all(isinstance(v, int) for v in vocab.values()):
        return False
    units = [u.lower() for u in sorted(vocab, key=vocab.__getitem__)]
    return units == ["<pad>", *GRAPHEMES[1:]]


class PretrainedNotFound(FileNotFoundError):
    """`model.wav2vec2.pretrained` is not a local Wav2Vec2 model directory; the message is one line saying what to
    put there (the CLI prints it as it does a missing corpus)."""


def check_pretrained(path: str) -> Path:
    """The pretrained directory, checked without loading it: config.json of a wav2vec2 model and weights."""
    d = Path(path).expanduser()
    problem = ""
    if not d.is_dir():
        problem = "does not exist"
    elif not (d / "config.json").is_file():
        problem = "has no config.json"
    else:
        try:
            model_type = json.loads((d / "config.json").read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            model_type = "unreadable"
        if model_type != "wav2vec2":
            problem = f"holds a {model_type!r} config.json, not a wav2vec2 one"
        elif not any((d / w).is_file() for w in _WEIGHTS):
            problem = "has no weights (model.safetensors or pytorch_model.bin)"
    if problem:
        raise PretrainedNotFound(
            f"model.wav2vec2.pretrained: {d} {problem}; put a Hugging Face Wav2Vec2 model there as save_pretrained "
            f"writes it (config.json with model_type wav2vec2 and model.safetensors, e.g. facebook/wav2vec2-base-960h"
            f" with its vocab.json), or set it to '' for a randomly initialized encoder")
    return d


def _load_pretrained(d: Path) -> tuple[Wav2Vec2Model, nn.Linear | None]:
    """The encoder of a checked directory, and its CTC output layer when that speaks our units."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

    architectures = json.loads((d / "config.json").read_text()).get("architectures") or []
    vocab = d / "vocab.json"
    # float32 whatever dtype the weights were saved in (transformers 5 would keep it): AdamW trains in float32.
    kw = {"dtype": torch.float32, "layerdrop": 0.0}
    if "Wav2Vec2ForCTC" in architectures and vocab.is_file() and _same_units(json.loads(vocab.read_text())):
        ctc = Wav2Vec2ForCTC.from_pretrained(d, **kw)
        return ctc.wav2vec2, ctc.lm_head
    return Wav2Vec2Model.from_pretrained(d, **kw), None


def random_config(cfg: ModelConfig) -> Wav2Vec2Config:
    """A randomly initialized encoder's shape: the transformer from `cfg`, the convolutions of wav2vec2-base."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                          intermediate_size=cfg.ff_dim, hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout,
                          activation_dropout=cfg.dropout, feat_proj_dropout=cfg.dropout, final_dropout=cfg.dropout,
                          layerdrop=0.0, vocab_size=cfg.vocab_size)


def normalize_waveform(wave: Tensor, mask: Tensor) -> Tensor:
    """Zero mean, unit variance over each item's valid samples (Wav2Vec2FeatureExtractor's do_normalize); padding
    stays zero."""
    m = mask.to(wave.dtype)
    n = m.sum(1, keepdim=True).clamp(min=1.0)
    mean = (wave * m).sum(1, keepdim=True) / n
    var = (((wave - mean) * m) ** 2).sum(1, keepdim=True) / n
    return (wave - mean) / torch.sqrt(var + 1e-7) * m


class Wav2Vec2CTC(Recognizer):
    """A Hugging Face Wav2Vec2 encoder with a CTC exit (own Linear head) after each layer in `cfg.exits`.

    The encoder comes from `hf_config` with random weights when given (rebuilding a saved run, tests), else from the
    `cfg.wav2vec2.pretrained` directory, else from `random_config(cfg)`. `n_mels` is the registry's signature only:
    the input is the waveform.
    """

    def __init__(self, cfg: ModelConfig, n_mels: int = 80, hf_config: Wav2Vec2Config | None = None) -> None:
        super().__init__()
        from transformers import Wav2Vec2Model

        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        init_head = None
        if hf_config is not None:
            w2v = Wav2Vec2Model(copy.deepcopy(hf_config))
        elif cfg.wav2vec2.pretrained:
            w2v, init_head = _load_pretrained(check_pretrained(cfg.wav2vec2.pretrained))
        else:
            w2v = Wav2Vec2Model(random_config(cfg))
        n_layers = w2v.config.num_hidden_layers
        if not cfg.exits or sorted(cfg.exits) != cfg.exits or cfg.exits[0] < 1 or cfg.exits[-1] > n_layers:
            raise ValueError(f"exits {cfg.exits} must be increasing layer numbers in 1..{n_layers}")
        w2v.config.layerdrop = 0.0
        w2v.encoder.layers = w2v.encoder.layers[: cfg.exits[-1]]  # layers past the last exit would never be used
        w2v.config.num_hidden_layers = cfg.exits[-1]
        if cfg.wav2vec2.freeze_feature_extractor:
            w2v.freeze_feature_encoder()
        self.cfg = cfg
        self.w2v = w2v
        self.drop = nn.Dropout(w2v.config.final_dropout)
        self.exits = nn.ModuleList(nn.Linear(w2v.config.hidden_size, cfg.vocab_size) for _ in cfg.exits)
        if init_head is not None and init_head.out_features == cfg.vocab_size:
            for head in self.exits:
                head.load_state_dict(init_head.state_dict())  # a copy each: the exits are trained apart

    @property
    def hf_config(self) -> Wav2Vec2Config:
        return self.w2v.config

    @property
    def padding_invariant(self) -> bool:
        """Whether valid outputs are independent of padding (not for the group-norm extractor of wav2vec2-base)."""
        return self.w2v.config.feat_extract_norm == "layer"

    def eval_batch_samples(self, max_samples: int) -> int:
        """Padded samples per evaluation batch: 1 (one utterance per batch) when padding would change the outputs."""
        return max_samples if self.padding_invariant else 1

    def output_lengths(self, n_samples: Tensor) -> Tensor:
        return self.w2v._get_feat_extract_output_lengths(n_samples, add_adapter=False)

    def forward(self, feats: Tensor, n_frames: Tensor, upto: int | None = None) -> tuple[list[Tensor], Tensor]:
        """feats: waveform [B, S]; n_frames: valid samples [B]. Log-probabilities [B, T', 32] at each exit (the
        first `upto` only, if given) and the valid T' of each item."""
        mask = valid_mask(n_frames, feats.shape[1])
        out = self.w2v(normalize_waveform(feats, mask), attention_mask=mask.long(), output_hidden_states=True)
        pre_ln = self.w2v.config.do_stable_layer_norm
        outs = []
        for layer, head in list(zip(self.cfg.exits, self.exits))[:upto]:
            h = out.hidden_states[layer]  # [0] is the encoder's input, [i] the output of layer i
            if pre_ln:
                h = self.w2v.encoder.layer_norm(h)
            outs.append(F.log_softmax(head(self.drop(h)), dim=-1))
        return outs, self.output_lengths(n_frames)


ENCODERS["wav2vec2"] = Wav2Vec2CTC


class Waveforms:
    """Utterances as waveforms, read from their audio files per batch; the interface of dataset.Utterances that
    the trainer's helpers use (`lengths` for bucketing, in samples; `collate` -> Batch with feats = waveform)."""

    def __init__(self, utts: Sequence[Utterance], tokenizer: GraphemeTokenizer) -> None:
        self.paths = [u.path for u in utts]
        self.texts = [u.text for u in utts]
        self.ids = [u.id for u in utts]
        self.tokens = [tokenizer.encode(t) for t in self.texts]
        self.lengths = np.array([round(u.duration * SAMPLE_RATE) for u in utts])  # bucketing only

    def __len__(self) -> int:
        return len(self.paths)

    def collate(self, idx: list[int]) -> Batch:
        waves = [load_audio(self.paths[i]) for i in idx]
        n = torch.tensor([len(w) for w in waves])
        x = torch.zeros(len(idx), int(n.max()))
        for row, w in enumerate(waves):
            x[row, : len(w)] = torch.from_numpy(w.astype(np.float32) / 32768.0)
        tokens = [self.tokens[i] for i in idx]
        return Batch(x, n, torch.tensor([t for tk in tokens for t in tk]), torch.tensor([len(tk) for tk in tokens]),
                     [self.texts[i] for i in idx], [self.ids[i] for i in idx])


def wer_per_exit(model: Wav2Vec2CTC, utts: Sequence[Utterance], max_batch_samples: int = 160 * SAMPLE_RATE
                 ) -> list[float]:
    """Greedy-CTC WER (%) of every exit on `utts` (the trainer's evaluate_greedy on their waveforms)."""
    from eeasr.train.trainer import evaluate_greedy

    tokenizer = GraphemeTokenizer()
    was_training = model.training
    wers = evaluate_greedy(model, Waveforms(utts, tokenizer), tokenizer, model.eval_batch_samples(max_batch_samples),
                           next(model.parameters()).device)
    model.train(was_training)
    return wers


def load_run(run: str | Path, device: str = "cpu") -> tuple[Wav2Vec2CTC, GraphemeTokenizer]:
    """A trained run directory's model (eval mode) and tokenizer; raises ValueError saying what is wrong."""
    from transformers import Wav2Vec2Config

    from eeasr.train.checkpoint import CHECKPOINT_VERSION

    run = Path(run).expanduser()
    missing = [n for n in ("config.yaml", HF_CONFIG, "model.pt") if not (run / n).exists()]
    if missing:
        raise ValueError(f"{run}: not a complete wav2vec2 run (missing {', '.join(missing)}); train one with "
                         f"`eeasr-train fit --config configs/wav2vec2.yaml`")
    blob = torch.load(run / "model.pt", map_location=device, weights_only=True)
    if blob.get("version") != CHECKPOINT_VERSION or blob["meta"].get("units") != list(GRAPHEMES):
        raise ValueError(f"{run}/model.pt: checkpoint version {blob.get('version')} with other units than this "
                         f"eeasr's (version {CHECKPOINT_VERSION}, {len(GRAPHEMES)} graphemes)")
    cfg = load_config(run / "config.yaml")
    model = Wav2Vec2CTC(cfg.model, hf_config=Wav2Vec2Config.from_json_file(str(run / HF_CONFIG)))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), GraphemeTokenizer()


def fit_wav2vec2(cfg: TrainConfig, out: Path | None = None, progress: bool = True,
                 stop_after_steps: int | None = None) -> Path:
    """Train (or resume) the wav2vec2 run in `out` (trainer.fit's contract; eager, no torch.compile); returns the
    run directory with the averaged model.pt."""
    from eeasr.train.checkpoint import CHECKPOINT_VERSION, weights_hash
    from eeasr.train.loop import StepOut, TrainLoop, corpus_manifest, device
    from eeasr.train.model import count_parameters
    from eeasr.train.trainer import evaluate_greedy, lr_at, train_log

    if cfg.init:
        raise ValueError("init is for log-mel runs; a wav2vec2 run starts from model.wav2vec2.pretrained")
    if cfg.model.wav2vec2.pretrained:
        check_pretrained(cfg.model.wav2vec2.pretrained)  # the one-line error before any other work
    out = Path(out or cfg.out).expanduser()
    manifest = corpus_manifest(cfg.data.corpus)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = GraphemeTokenizer()
    cfg.model.vocab_size = tokenizer.vocab_size
    dev = device()
    torch.manual_seed(cfg.seed)
    model = Wav2Vec2CTC(cfg.model).to(dev)
    hf = model.hf_config
    # The checkpoint decides the shape; config.yaml records it rather than the recipe's unused defaults.
    cfg.model.d_model, cfg.model.n_heads = hf.hidden_size, hf.num_attention_heads
    cfg.model.ff_dim, cfg.model.n_layers = hf.intermediate_size, hf.num_hidden_layers
    save_config(cfg, out / "config.yaml")
    hf.to_json_file(str(out / HF_CONFIG))
    utts = read_manifest(manifest)
    train = Waveforms([u for u in utts if u.split == "train"], tokenizer)
    dev_set = Waveforms([u for u in utts if u.split == "dev"], tokenizer)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    weights = cfg.optim.exit_weights or [1.0] * len(cfg.model.exits)
    max_samples = cfg.data.max_batch_frames * SAMPLES_PER_FRAME
    steps_per_epoch = len(bucket_batches(train.lengths, max_samples, cfg.seed, 0))
    total = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch

    loop = TrainLoop(out, model, opt, train_log(out / "train_log.csv", model.loss_names(), len(weights)),
                     seed=cfg.seed, total=total, lr=lambda step: lr_at(step, cfg, total), grad_clip=cfg.optim.grad_clip,
                     keep=max(2, cfg.optim.average_last), log_every=cfg.log_every_steps,
                     save_every=cfg.save_every_steps, progress=progress)
    loop.resume(dev)

    def forward(idx: np.ndarray, seed: int) -> StepOut:
        np.random.seed(seed % 2**32)  # Hugging Face draws its time masks from numpy's global generator
        b = train.collate(idx)
        feats, n = b.feats.to(dev), b.n_frames.to(dev)
        terms = model.loss_terms(model, feats, n, b, weights)
        return StepOut(sum(terms.values()), terms, int(n.sum()) / SAMPLES_PER_FRAME)

    def end_epoch(epoch: int) -> dict[str, str]:
        wers = evaluate_greedy(model, dev_set, tokenizer, model.eval_batch_samples(max_samples), dev)
        tqdm.write(f"epoch {epoch}: dev WER per exit " + " ".join(f"{w:.1f}" for w in wers))
        return {f"dev_wer_exit{j + 1}": f"{w:.2f}" for j, w in enumerate(wers)}

    if progress:
        print(f"{count_parameters(model) / 1e6:.2f} M parameters ({sum(p.numel() for p in params) / 1e6:.2f} M "
              f"trained), {len(train)} training items, {steps_per_epoch} steps/epoch, {total} steps")
    if not loop.run(lambda epoch: bucket_batches(train.lengths, max_samples, cfg.seed, epoch), forward, end_epoch,
                    stop_after_steps):
        return out
    averaged = {k: v.cpu() for k, v in loop.average(cfg.optim.average_last).items()}
    meta = {"steps": loop.step, "epochs": loop.epoch, "train_seconds": round(loop.elapsed),
            "averaged": cfg.optim.average_last, "name": cfg.name, "units": list(GRAPHEMES),
            "model_hash": weights_hash(averaged)}
    tmp = out / "model.pt.tmp"
    torch.save({"version": CHECKPOINT_VERSION, "state_dict": averaged, "meta": meta}, tmp)
    tmp.replace(out / "model.pt")
    return out
