"""What the PyTorch peers reach on this machine now, for the same gin-configured GPT-2 shape.

  python benchmarks/peer_throughput.py --task=train --gin_file=runs/benchmark.gin \
      --gin_file=models/gpt_cpu_small.gin --gin.BATCH_SIZE=12 --gin.SEQ_LEN=64
  python benchmarks/peer_throughput.py --task=decode --gin_file=runs/benchmark.gin \
      --gin_file=models/gpt_baby.gin --gin.VOCAB_SIZE=50257 \
      --batch_size=1 --prompt_len=64 --new_tokens=192

The anchors in train_throughput.py / decode_throughput.py are the issue's figures, measured
once. This VM's speed drifts by ~10% within a day, so the fair ratio divides two runs taken in
the same hour: this script gives the peer's side of it.

- `--task=train`: a nanoGPT-style PyTorch model (fused q/k/v projection, PyTorch's fused
  causal attention, tied head; written here, parameters named and laid out as HF GPT-2's) and
  `torch.optim.AdamW` (weight decay on matrices, as nanoGPT; gradient clipping as the
  TrainConfig) over synthetic tokens, timed like train_throughput.py: `tokens_per_sec` is
  batch * seq_len / step time, median over repeats of `--steps` steps.
- `--task=decode`: Hugging Face `transformers.GPT2LMHeadModel.generate`, greedy, with the KV
  cache, every row generating exactly new_tokens, timed like decode_throughput.py:
  batch * new_tokens / wall time of one whole call (prefill included).

Only GPT-2-shaped configs have these peers (learned positions, pre-LayerNorm, GELU or ReLU MLP,
biases, tied embeddings, plain multi-head attention); others are refused with the reason. The
peer's parameter count is checked against llmjax's for the same config. Needs torch and
transformers (the `test` extra). Random weights; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a source checkout.

from llmjax.cli import gin_config  # noqa: E402
from llmjax.interop import gpt2  # noqa: E402
from llmjax.models.config import ModelConfig  # noqa: E402
from llmjax.models.interface import LanguageModel  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as e:  # pragma: no cover - the test extra installs torch.
  raise SystemExit("benchmarks/peer_throughput.py needs torch and transformers: "
                   "pip install -e '.[test]'.") from e


def check_gpt2_shape(cfg: ModelConfig) -> None:
  """Raises ValueError naming what keeps `cfg` from having a GPT-2-shaped PyTorch peer."""
  problems = gpt2.export_problems(cfg)
  if problems:
    raise ValueError("the PyTorch peers are GPT-2-shaped; this model is not: "
                     + "; ".join(problems) + ". Use models/gpt_baby.gin or "
                     "models/gpt_cpu_small.gin (or another GPT-2-shaped config).")


class _Block(nn.Module):
  """Pre-LayerNorm block with GPT-2's parameter names and [in, out] (Conv1D) layout."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    d, f = cfg.embed_dim, cfg.mlp_dim
    self.heads = cfg.num_heads
    self.approximate = "tanh" if cfg.gelu_approximate else "none"
    self.relu = cfg.mlp == "relu"
    self.ln_1 = nn.LayerNorm(d, eps=cfg.norm_eps)
    self.ln_2 = nn.LayerNorm(d, eps=cfg.norm_eps)
    self.attn = nn.ParameterDict({"c_attn_weight": nn.Parameter(torch.empty(d, 3 * d)),
                                  "c_attn_bias": nn.Parameter(torch.zeros(3 * d)),
                                  "c_proj_weight": nn.Parameter(torch.empty(d, d)),
                                  "c_proj_bias": nn.Parameter(torch.zeros(d))})
    self.mlp = nn.ParameterDict({"c_fc_weight": nn.Parameter(torch.empty(d, f)),
                                 "c_fc_bias": nn.Parameter(torch.zeros(f)),
                                 "c_proj_weight": nn.Parameter(torch.empty(f, d)),
                                 "c_proj_bias": nn.Parameter(torch.zeros(d))})

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    a, m = self.attn, self.mlp
    qkv = torch.addmm(a["c_attn_bias"], self.ln_1(x).view(b * t, d), a["c_attn_weight"])
    q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
               for y in qkv.view(b, t, 3 * d).split(d, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).reshape(b * t, d)
    x = x + torch.addmm(a["c_proj_bias"], y, a["c_proj_weight"]).view(b, t, d)
    h = torch.addmm(m["c_fc_bias"], self.ln_2(x).view(b * t, d), m["c_fc_weight"])
    h = F.relu(h) if self.relu else F.gelu(h, approximate=self.approximate)
    return x + torch.addmm(m["c_proj_bias"], h, m["c_proj_weight"]).view(b, t, d)


class NanoGPT(nn.Module):
  """A GPT-2-shaped decoder in the nanoGPT style; `logits(tokens)` and `loss(tokens, targets)`.

  `load_hf_tensors` takes HF GPT-2 names (what `llmjax convert --to_hf` writes), so the tests
  can check it computes llmjax's logits.
  """

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
    self.wpe = nn.Embedding(cfg.max_seq_len, cfg.embed_dim)
    self.h = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))
    self.ln_f = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
    for p in self.parameters():  # GPT-2's init: N(0, 0.02) matrices.
      if p.dim() == 2:
        nn.init.normal_(p, std=0.02)

  def logits(self, tokens: torch.Tensor) -> torch.Tensor:
    x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
    for block in self.h:
      x = block(x)
    return self.ln_f(x) @ self.wte.weight.T  # Tied head.

  def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = self.logits(tokens)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

  def load_hf_tensors(self, tensors: dict[str, Any]) -> None:
    """Copies HF GPT-2 named arrays in (`transformer.h.0.attn.c_attn.weight`, ...); strict."""
    own = {}
    for name, value in tensors.items():
      name = name.removeprefix("transformer.")
      for group in (".attn.", ".mlp."):
        if group in name:  # ParameterDict keys: one level, '_' instead of '.'.
          head, tail = name.split(group)
          name = f"{head}{group}{tail.replace('.', '_')}"
      own[name] = torch.tensor(np.asarray(value))
    self.load_state_dict(own, strict=True)


def _timed_rates(run, work: float, warmup: int, repeats: int, steps: int) -> list[float]:
  for _ in range(warmup):
    run()
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      run()
    rates.append(work * steps / (time.perf_counter() - start))
  return rates


def train_peer(configs: dict, args: argparse.Namespace) -> dict[str, Any]:
  """nanoGPT-style training step tokens/s for the gin config's model, batch and length."""
  cfg, train_cfg = configs["model"], configs["train"]
  batch, length = train_cfg.batch_size, train_cfg.seq_len
  model = NanoGPT(cfg)
  matrices = [p for p in model.parameters() if p.dim() >= 2]
  vectors = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW(
      [{"params": matrices, "weight_decay": train_cfg.weight_decay},
       {"params": vectors, "weight_decay": 0.0}],
      lr=train_cfg.learning_rate, betas=(train_cfg.b1, train_cfg.b2), eps=train_cfg.eps)
  generator = torch.Generator().manual_seed(0)
  tokens = torch.randint(0, cfg.vocab_size, (batch, length + 1), generator=generator)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  last = {}

  def step() -> None:
    loss = model.loss(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train_cfg.clip_norm > 0:
      nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_norm)
    optimizer.step()
    last["loss"] = loss.detach()

  rates = _timed_rates(step, batch * length, args.warmup, args.repeats, args.steps)
  return {"peer": "nanoGPT-style PyTorch training (this file), torch.optim.AdamW",
          "num_params": sum(p.numel() for p in model.parameters()),
          "batch_size": batch, "seq_len": length, "rates": rates,
          "final_loss": float(last["loss"])}


def decode_peer(configs: dict, args: argparse.Namespace) -> dict[str, Any]:
  """HF transformers `generate` tokens/s (greedy, KV cache) for a GPT-2 of the config's shape."""
  import transformers

  cfg = configs["model"]
  if args.prompt_len + args.new_tokens > cfg.max_seq_len:
    raise ValueError(f"--prompt_len + --new_tokens = {args.prompt_len + args.new_tokens} is "
                     f"over the model's max_seq_len {cfg.max_seq_len}.")
  hf_config = {k: v for k, v in gpt2.config_to_hf(cfg).items()
               if k not in ("architectures", "model_type")}
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
  generator = torch.Generator().manual_seed(0)
  prompt = torch.randint(0, cfg.vocab_size, (args.batch_size, args.prompt_len),
                         generator=generator)
  mask = torch.ones_like(prompt)
  out = {}

  def call(new_tokens: int) -> None:
    with torch.no_grad():
      out["tokens"] = model.generate(prompt, attention_mask=mask, do_sample=False,
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     pad_token_id=0)

  call(2)  # Warm-up outside the timing (first-call allocations).
  rates = _timed_rates(lambda: call(args.new_tokens), args.batch_size * args.new_tokens,
                       args.warmup, args.repeats, 1)
  generated = out["tokens"].shape[1] - args.prompt_len
  if generated != args.new_tokens:
    raise RuntimeError(f"generate produced {generated} tokens, not {args.new_tokens}.")
  return {"peer": "transformers GPT2LMHeadModel.generate, greedy, KV cache",
          "num_params": sum(p.numel() for p in model.parameters()),
          "batch_size": args.batch_size, "prompt_len": args.prompt_len,
          "new_tokens": args.new_tokens, "rates": rates,
          "transformers_version": transformers.__version__}


def main(argv: list[str]) -> dict[str, Any]:
  rest, bindings = gin_config.split_gin_flags(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--task", choices=("train", "decode"), required=True)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--steps", type=int, default=10, help="train: timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps / calls")
  parser.add_argument("--batch_size", type=int, default=1, help="decode: rows")
  parser.add_argument("--prompt_len", type=int, default=64, help="decode: prompt tokens")
  parser.add_argument("--new_tokens", type=int, default=192, help="decode: generated tokens")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch intra-op threads (default: torch's, one per core)")
  args = parser.parse_args(rest)
  gin_config.parse(args.gin_file or ["runs/quickstart.gin"], bindings)
  configs = gin_config.build_all()
  cfg = configs["model"]
  check_gpt2_shape(cfg)
  if args.threads:
    torch.set_num_threads(args.threads)

  expected = LanguageModel(cfg).num_params()  # Analytic: builds no parameters.
  result = (train_peer if args.task == "train" else decode_peer)(configs, args)
  if result["num_params"] != expected:
    raise RuntimeError(f"the peer has {result['num_params']} parameters, llmjax "
                       f"{expected}: it would not be the same model.")
  rates = result.pop("rates")
  return {
      "benchmark": "peer_throughput",
      "task": args.task,
      "gin_files": args.gin_file,
      "bindings": bindings,
      "model_config": json.loads(cfg.to_json()),
      "tokens_per_sec": statistics.median(rates),
      "tokens_per_sec_min": min(rates),
      "tokens_per_sec_max": max(rates),
      **result,
      "dtype": "float32",
      "torch_version": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "device": platform.processor() or platform.machine(),
      "python": platform.python_version(),
  }


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
