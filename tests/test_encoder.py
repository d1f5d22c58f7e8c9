"""The encoder: equal to sentence-transformers for the default model; any HF model directory works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmc.config import ConfigError
from xmc.data.dataset import PreparedDataset
from xmc.data.tokens import load_tokenizer, tokenize_texts, tokenizer_id
from xmc.models.encoder import (
    GROUP_OVERHEAD_TOKENS,
    FrozenBackbone,
    TextEncoder,
    encode_tokens,
    freeze_for_inference,
    length_groups,
    normalized,
    resolve_model_dir,
)


@pytest.fixture(scope="module")
def default_encoder():
    return TextEncoder(resolve_model_dir("default")).eval()


def test_matches_sentence_transformers(default_encoder, cooking_prepared):
    from sentence_transformers import SentenceTransformer

    dataset = PreparedDataset(cooking_prepared)
    texts = dataset.texts("test")[:48] + dataset.texts("labels")[:16]
    reference = SentenceTransformer(str(resolve_model_dir("default")), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True)
    ids, lengths = tokenize_texts(load_tokenizer(default_encoder.model_dir), texts, max_len=128)
    ours = encode_tokens(normalized(default_encoder), ids, lengths, batch_size=20)
    assert ours.shape == reference.shape == (64, 384)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_and_length_sorting_do_not_change_vectors(default_encoder, cooking_prepared):
    cache = PreparedDataset(cooking_prepared).token_cache(default_encoder.model_dir, 48, "title", "title",
                                                          progress=False)
    ids, lengths = cache.arrays("test")
    rows = np.array([5, 900, 17, 2999, 42, 1000])
    batched = encode_tokens(normalized(default_encoder), ids, lengths, batch_size=4, rows=rows)
    one_by_one = np.concatenate([encode_tokens(normalized(default_encoder), ids, lengths, batch_size=1,
                                               rows=np.array([r])) for r in rows])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32(default_encoder, cooking_prepared):
    """The GPU path encodes in bf16; on CPU autocast exercises the same code and must stay close."""
    cache = PreparedDataset(cooking_prepared).token_cache(default_encoder.model_dir, 48, "title", "title",
                                                          progress=False)
    ids, lengths = cache.arrays("labels")
    rows = np.arange(32)
    fp32 = encode_tokens(normalized(default_encoder), ids, lengths, rows=rows)
    bf16 = encode_tokens(normalized(default_encoder), ids, lengths, rows=rows, dtype=torch.bfloat16)
    cosine = (fp32 * bf16).sum(axis=1)
    assert cosine.min() > 0.98


def test_any_hugging_face_model_directory(tmp_path):
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer(resolve_model_dir("default"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "tiny-bert")
    tokenizer.save_pretrained(tmp_path / "tiny-bert")
    model_dir = resolve_model_dir(str(tmp_path / "tiny-bert"))
    encoder = TextEncoder(model_dir, pooling="cls").eval()
    ids, lengths = tokenize_texts(load_tokenizer(model_dir), ["salt in bread", "how long to boil eggs"], 16)
    out = encode_tokens(normalized(encoder), ids, lengths)
    assert out.shape == (2, 32)
    assert tokenizer_id(model_dir).startswith("tiny-bert-")
    with pytest.raises(ConfigError, match="is not a Hugging Face model directory"):
        resolve_model_dir(str(tmp_path / "nowhere"))


def test_length_groups_cover_the_batch_and_fewer_on_a_gpu(default_encoder, cooking_prepared):
    """Real question lengths: every row in exactly one group, each group's rows of similar length; a GPU's
    costlier forward calls give fewer groups; the grouped forward equals one padded forward."""
    cache = PreparedDataset(cooking_prepared).token_cache(default_encoder.model_dir, 48, "title", "title",
                                                          progress=False)
    ids, lengths = cache.arrays("train")
    rows = np.random.default_rng(0).choice(len(lengths), 256, replace=False)
    batch_lengths = torch.from_numpy(lengths[rows].astype(np.int64))
    cpu_groups = length_groups(batch_lengths, GROUP_OVERHEAD_TOKENS["cpu"])
    gpu_groups = length_groups(batch_lengths, GROUP_OVERHEAD_TOKENS["cuda"])
    for groups in (cpu_groups, gpu_groups):
        assert sorted(torch.cat(groups).tolist()) == list(range(256))
        widths = [int(batch_lengths[g].max()) for g in groups]
        assert widths == sorted(widths) and widths[-1] == int(batch_lengths.max())
    assert 1 <= len(gpu_groups) <= 2 < len(cpu_groups)
    padded = [sum(len(g) * int(batch_lengths[g].max()) for g in groups)
              for groups in (cpu_groups, gpu_groups)]
    assert padded[0] < padded[1] <= 256 * int(batch_lengths.max())

    batch_ids = torch.from_numpy(ids[rows].astype(np.int64))
    mask = (torch.arange(ids.shape[1])[None, :] < batch_lengths[:, None]).long()
    with torch.no_grad():
        grouped = default_encoder(batch_ids, mask)
        whole = default_encoder.pooled(batch_ids, mask)
    torch.testing.assert_close(grouped, whole, atol=2e-5, rtol=1e-4)


def test_frozen_backbone_encodes_like_the_eager_one(cooking_prepared):
    """The serving graph (TorchScript, traced once on a padded pair) gives the eager vectors for single
    questions of every length and for length-sorted padded batches of any size."""
    eager = TextEncoder(resolve_model_dir("default")).eval()
    frozen = freeze_for_inference(TextEncoder(resolve_model_dir("default")).eval())
    assert isinstance(frozen.backbone, FrozenBackbone) and not isinstance(eager.backbone, FrozenBackbone)
    cache = PreparedDataset(cooking_prepared).token_cache(eager.model_dir, 48, "title", "title",
                                                          progress=False)
    ids, lengths = cache.arrays("test")
    rows = np.argsort(lengths)[np.linspace(0, len(lengths) - 1, 40).astype(int)]  # shortest to longest
    assert lengths[rows].min() < 6 and lengths[rows].max() > 25
    for batch_size in (1, 8, 40):
        ours = encode_tokens(normalized(frozen), ids, lengths, batch_size=batch_size, rows=rows)
        reference = encode_tokens(normalized(eager), ids, lengths, batch_size=batch_size, rows=rows)
        np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_encoder_attention_never_uses_cudnn(default_encoder, cooking_prepared):
    """cuDNN attention plans anew for every batch shape (about 55 ms of host time a call on an H100, where a
    training step's shapes keep changing): the encoder's forward runs with it switched off, and leaves the
    process's setting as it found it."""
    cache = PreparedDataset(cooking_prepared).token_cache(default_encoder.model_dir, 48, "title", "title",
                                                          progress=False)
    ids, mask = cache.batch("train", np.arange(8))
    seen = []
    hook = default_encoder.backbone.register_forward_hook(
        lambda *_: seen.append((torch.backends.cuda.cudnn_sdp_enabled(),
                                torch.backends.cuda.flash_sdp_enabled(),
                                torch.backends.cuda.mem_efficient_sdp_enabled())))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        with torch.no_grad():
            default_encoder(ids, mask)
    finally:
        hook.remove()
    assert seen and all(state == (False, True, True) for state in seen)
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
