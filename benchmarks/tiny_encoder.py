r"""Write a one-layer, 32-wide BERT with the default encoder's tokenizer, for measuring the framework.

    python benchmarks/tiny_encoder.py OUT_DIR
    python benchmarks/train_throughput.py --config configs/wordnet.yaml --set encoder.model=OUT_DIR \
        --profile 4

With the encoder's own compute nearly gone, what a training step still costs is the project's and the
libraries' overhead (pool building, collectives, optimizers, kernel launches, per-shape planning), which the
real encoder hides on a CPU. Random weights: for speed readings only, never for quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xmc.data.tokens import load_tokenizer
from xmc.models.config import DEFAULT_MODEL
from xmc.models.encoder import resolve_model_dir


def write_tiny_encoder(out: Path, source: Path, hidden_size: int = 32) -> Path:
    """A one-layer BERT ``hidden_size`` wide (``benchmarks/scale.py`` uses MiniLM's 384, so that label
    vectors are as large as the real encoder's)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(source))
    config.update({"hidden_size": hidden_size, "num_hidden_layers": 1,
                   "num_attention_heads": max(2, hidden_size // 64), "intermediate_size": 2 * hidden_size})
    out.mkdir(parents=True, exist_ok=True)
    AutoModel.from_config(config).save_pretrained(str(out))
    load_tokenizer(source).save_pretrained(str(out))
    return out


def write_first_layers(out: Path, source: Path, layers: int = 1) -> Path:
    """The ``source`` model cut to its first ``layers`` transformer layers, with its own weights (embeddings
    and those layers). ``benchmarks/scale.py`` encodes with MiniLM's first layer: a random layer maps every
    text to nearly the same direction, where ANN recall and IVF list sizes are unlike a real encoder's; a
    pre-trained layer spreads them as a trained encoder does (measured:
    benchmarks/results/scale_synthetic-1.3M_cpu2_2026-12-07.md)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(source))
    config.update({"num_hidden_layers": layers})
    model = AutoModel.from_config(config)
    missing, _ = model.load_state_dict(AutoModel.from_pretrained(str(source)).state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"{source}: the first {layers} layers lack {missing}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    load_tokenizer(source).save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--like", default=DEFAULT_MODEL,
                        help="model directory whose tokenizer and kind to use")
    parser.add_argument("--hidden-size", type=int, default=32)
    args = parser.parse_args()
    print(write_tiny_encoder(args.out, resolve_model_dir(args.like), args.hidden_size))


if __name__ == "__main__":
    main()
