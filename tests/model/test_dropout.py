"""The CPU training dropout: same distribution and gradient as nn.Dropout, reproducible, a drop-in replacement."""
import pytest
import torch
from transformers import AutoModelForTokenClassification

from backend.model.dropout import FastDropout, use_fast_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_a_share_p_of_elements_and_scales_the_rest_to_keep_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    y = FastDropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)), rtol=1e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)


def test_every_position_is_dropped_equally_often():
    # The mask reads 16-bit lanes of 64-bit draws: no lane (position modulo 4) may be favoured.
    torch.manual_seed(1)
    counts = torch.zeros(8)
    for _ in range(200):
        counts += (FastDropout(0.3).train()(torch.ones(1000, 8)) == 0).float().sum(0)
    share = counts / (200 * 1000)
    assert torch.all((share - 0.3).abs() < 0.01), share


def test_the_gradient_passes_exactly_where_the_value_did_with_the_same_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = FastDropout(0.2).train()(x)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y != 0)
    assert torch.allclose(x.grad[x.grad != 0], torch.tensor(1 / 0.8))


def test_same_seed_same_mask_and_eval_mode_is_the_identity():
    x = torch.randn(50, 70)
    layer = FastDropout(0.1).train()
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x))
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))


def test_replaces_every_dropout_of_a_transformer_and_keeps_its_outputs_in_eval_mode(tiny_base_model):
    model = AutoModelForTokenClassification.from_pretrained(tiny_base_model, num_labels=3).eval()
    before = sum(type(m) is torch.nn.Dropout for m in model.modules())
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    expected = model(input_ids=ids).logits
    assert use_fast_dropout(model) == before > 0
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert torch.allclose(model(input_ids=ids).logits, expected)
    model.train()
    torch.manual_seed(0)
    noisy = model(input_ids=ids).logits
    assert not torch.allclose(noisy, expected)  # dropout is active in training mode
