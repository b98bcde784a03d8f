"""VELORA's text experts: the byte/number encoder, the math expert, the language expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tertulia.data.text import encode
from tertulia.nn.text_experts import ByteEncoder, LanguageExpert, MathExpert, RouterFeatures


def test_encoder_ignores_padding_and_reads_number_values():
    torch.manual_seed(0)
    enc_mod = ByteEncoder(16, 1, 8).eval()
    short = encode(["What is 7 plus 3?"], max_len=40)
    long = encode(["What is 7 plus 3?"], max_len=120)
    with torch.no_grad():
        a, _ = enc_mod(short)
        b, _ = enc_mod(long)
        c, _ = enc_mod(encode(["What is 700 plus 3?"], max_len=40))
    torch.testing.assert_close(a, b)  # padding never reaches a real token
    assert (a - c).abs().max() > 1e-4  # only the number's value changed


def test_math_expert_shapes_hard_choices_at_eval_and_tagged_arithmetic():
    torch.manual_seed(0)
    model = MathExpert(16, 1, 8)
    enc = encode(["3 + 4", "Subtract 3 from 10", "6 * -2"], max_len=40)
    out = model(enc)
    assert out.value.shape == (3,) and out.value.dtype == torch.float64
    assert out.op_logits.shape == (3, 4) and out.order_logit.shape == (3,)
    model.eval()
    with torch.no_grad():
        hard = model(enc)
    pick = hard.op_logits.argmax(-1)
    order = (hard.order_logit > 0).long()
    expect = hard.per_op[torch.arange(3), pick, order]
    torch.testing.assert_close(hard.value, expect)
    (bank,) = model.optim_groups()  # the bank's own optimiser settings
    assert bank["lr"] > 0.01 and bank["betas"] == (0.9, 0.99)
    assert {id(p) for p in bank["params"]} == {id(p) for p in model.arith.parameters()}
    loss, logs = model.loss(
        out,
        torch.tensor([0, 1, 2]),
        torch.tensor([0, 1, 0]),
        torch.tensor([7.0, 7.0, -12.0], dtype=torch.float64),
    )
    assert loss.requires_grad and {"ce", "bce", "arith", "op_acc", "order_acc"} <= set(logs)


def test_math_expert_learns_op_and_operand_order_from_text():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    templates = [
        ("{a} plus {b}", 0, 0),
        ("{a} + {b}", 0, 0),
        ("{a} minus {b}", 1, 0),
        ("subtract {b} from {a}", 1, 1),
        ("{a} times {b}", 2, 0),
        ("{a} * {b}", 2, 0),
        ("{a} divided by {b}", 3, 0),
        ("{a} / {b}", 3, 0),
    ]
    rows = []
    for i in range(400):
        tpl, op, rev = templates[i % len(templates)]
        a, b = (int(v) for v in torch.randint(1, 50, (2,), generator=gen))
        rows.append((tpl.format(a=a, b=b), op, rev))
    enc = encode([r[0] for r in rows], max_len=40)
    op = torch.tensor([r[1] for r in rows])
    rev = torch.tensor([r[2] for r in rows])
    model = MathExpert(16, 1, 8)
    opt = torch.optim.Adam(model.param_groups(lr=1e-2))
    for _ in range(60):
        out = model(enc)
        ce = F.cross_entropy(out.op_logits, op)
        bce = F.binary_cross_entropy_with_logits(out.order_logit, rev.float())
        opt.zero_grad()
        (ce + bce).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(enc)
    assert (out.op_logits.argmax(-1) == op).float().mean() > 0.95
    assert ((out.order_logit > 0).long() == rev).float().mean() > 0.95


def test_language_expert_overfits_a_tiny_set_and_router_features_shape():
    torch.manual_seed(0)
    texts = ["Where is the station?", "Close the door.", "It is raining.", "What time is it?"]
    labels = torch.tensor([0, 1, 2, 0])
    enc = encode(texts, max_len=32)
    model = LanguageExpert(16, 3, layers=1, d_state=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(enc), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(enc).argmax(-1) == labels).all()
    assert RouterFeatures(8)(enc).shape == (4, 8)
