"""The CUDA paths, run with ``pytest -m cuda`` on a machine with a GPU (benchmarks/gpu_check.sh runs them).

Mixed precision (bf16, and fp16 with a gradient scaler) through the training loop, channels-last,
the device-side input pipeline, torch.compile of every head (one graph, no recompiles across
batch sizes), CUDA graphs (compile mode reduce-overhead), the gram vector's float32 path under
autocast, fused attention kernels, nccl DDP on one device, exact resume and export of a
CUDA-trained checkpoint. Without a visible GPU every test here is skipped, with the reason.

The training runs reuse tests/test_reliability_resume.py's set-up: a 2-branch CCT-2 on 16
generated CIFAR-100-layout images, batch 4, ``--deterministic``.
"""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path

# deterministic cuBLAS (--deterministic): read when CUDA starts, so set before any test touches it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from data_fixtures import make_cifar100  # noqa: E402
from model_fixtures import HEAD_KINDS, fresh_dynamo, small_head_kwargs  # noqa: E402, F401  (a fixture)
from test_reliability_resume import flags, train_keeping  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import gaheads  # noqa: E402
from gaheads.checkpoint import load_checkpoint  # noqa: E402
from gaheads.heads import create_head  # noqa: E402
from gaheads.heads.common import gram_triangle_index, gram_vector  # noqa: E402
from gaheads.train import engine  # noqa: E402
from gaheads.train.cli import main as train_cli  # noqa: E402
from gaheads.train.config import parse_args  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("fresh_dynamo"),
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]

KINDS = HEAD_KINDS
CUDA = "cuda"



@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_cifar100(root, n_train=16, n_test=8, n_classes=5)
    return root


def step_losses(run: Path) -> dict[int, float]:
    with open(run / "steps.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


# --------------------------------------------------------------------------- heads and kernels
class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, by name (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", KINDS)
def test_heads_run_matmuls_not_convolutions_on_cuda(kind):
    head = create_head(kind, 32, 7, 3, **small_head_kwargs(kind)).to(CUDA).train()
    x = torch.randn(4, 32, 6, 6, device=CUDA, requires_grad=True)
    with OpCounter() as ops:
        head(x).square().sum().backward()
    convs = [n for n in ops.names if "convolution" in n]
    assert convs == [] and any(n in ("mm", "bmm", "baddbmm", "addmm") for n in ops.names)


@pytest.mark.parametrize("kind", KINDS)
def test_head_compiles_to_one_graph_without_recompiles_across_batch_sizes(kind):
    from torch._dynamo.testing import CompileCounterWithBackend

    head = create_head(kind, 32, 7, 3, **small_head_kwargs(kind)).to(CUDA).train()
    explanation = torch._dynamo.explain(head)(torch.randn(4, 32, 5, 5, device=CUDA))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    torch._dynamo.reset()
    # inductor for the two heads the models use; the other three are made of their modules, and
    # AOT autograd alone (no code generation) shows their forward and backward trace once
    counter = CompileCounterWithBackend("inductor" if kind in ("ga", "seqattn") else "aot_eager")
    compiled = torch.compile(head, backend=counter, fullgraph=True)
    eager = copy.deepcopy(head)
    for i, batch in enumerate((4, 8, 16, 6)):
        x = torch.randn(batch, 32, 5, 5, device=CUDA)
        if i == 0:
            torch._dynamo.mark_dynamic(x, 0)  # compile for any batch size up front
        out = compiled(x)
        out.sum().backward()
        torch.testing.assert_close(out, eager(x), atol=1e-4, rtol=1e-4)
    assert counter.frame_count == 1


def test_gram_vector_stays_float32_under_autocast():
    tri = gram_triangle_index(16).to(CUDA)
    x = (torch.randn(2, 3, 16, 49, device=CUDA) * 300).requires_grad_()
    for dtype in (torch.bfloat16, torch.float16):
        xl = x.detach().to(dtype).requires_grad_()
        with torch.autocast(CUDA, dtype=dtype):
            v = gram_vector(xl, 7, tri)
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())
        # the same input in float64: only float32 rounding apart (fp16 squares of 300 sum past its range)
        ref = gram_vector(xl.detach().double(), 7, tri)
        torch.testing.assert_close(v.double(), ref, atol=1e-5, rtol=1e-4)
        v.sum().backward()
        assert xl.grad.dtype == dtype and bool(torch.isfinite(xl.grad).all())


def test_ga_head_under_bf16_autocast_is_close_to_float32():
    head = create_head("ga", 64, 10, 4, gram_dim=16, contraction_groups=4, attn_dim=32).to(CUDA).eval()
    x = torch.randn(8, 64, 7, 7, device=CUDA)
    with torch.no_grad():
        ref = head(x)
        with torch.autocast(CUDA, dtype=torch.bfloat16):
            low = head(x)
    assert bool(torch.isfinite(low).all())
    torch.testing.assert_close(low.float(), ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_cct_attention_runs_on_the_fused_sdpa_kernel(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = gaheads.create_model("seqattn2_cct_2_3x2_32", num_classes=10).to(CUDA).eval()
    assert any(getattr(m, "fused_attn", False) for m in model.modules()), "timm attention not on F.sdpa"
    x = torch.randn(4, 3, 32, 32, device=CUDA)
    outs, grads = [], []
    for kernel in (SDPBackend.MATH, getattr(SDPBackend, backend)):
        xi = x.clone().requires_grad_()
        # only this kernel allowed: if it cannot take these inputs, sdpa raises instead of falling back
        with sdpa_kernel(kernel), torch.autocast(CUDA, dtype=torch.bfloat16):
            out = model(xi)
        out.float().sum().backward()
        outs.append(out.float())
        grads.append(xi.grad)
    torch.testing.assert_close(outs[1], outs[0], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(grads[1], grads[0], atol=3e-2, rtol=5e-2)


def test_channels_last_model_matches_contiguous_forward_and_backward():
    model = gaheads.create_model("ga2@resnet18", num_classes=10).to(CUDA).train()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False, deterministic=True):
        out = model(x, return_branches=True)
        out_cl = cl(x.contiguous(memory_format=torch.channels_last), return_branches=True)
        torch.testing.assert_close(out_cl, out, atol=1e-4, rtol=1e-4)
        out.square().sum().backward()
        out_cl.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), cl.parameters()):
        torch.testing.assert_close(q.grad.contiguous(), p.grad.contiguous(), atol=1e-4, rtol=1e-3, msg=name)


def test_device_prefetcher_on_cuda_matches_host_normalisation():
    from torch.utils.data import DataLoader, TensorDataset

    from gaheads.data.prefetch import DevicePrefetcher, normalization_constants, normalize_uint8

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.arange(12)), batch_size=4, pin_memory=True)
    batches = list(DevicePrefetcher(loader, CUDA, mean, std, channels_last=True))
    torch.cuda.synchronize()
    host = normalize_uint8(images, *normalization_constants(mean, std, "cpu"))
    assert len(batches) == 3
    for i, (x, y) in enumerate(batches):
        assert x.is_cuda and x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert y.tolist() == list(range(4 * i, 4 * i + 4))
        torch.testing.assert_close(x.cpu(), host[4 * i:4 * i + 4], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the training loop on CUDA
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_training_loop_on_cuda(dtype, cifar, tmp_path):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    summary = engine.train(parse_args([*flags(cifar, tmp_path, "--epochs", "1", "--device", CUDA, "--amp",
                                             "--amp-dtype", dtype, "--channels-last")]))
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    losses = step_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(list(losses.values()))))
    ck = load_checkpoint(tmp_path / "last.pth")
    if dtype == "float16":  # the scaler ran: its scale and growth tracker are saved for resume
        assert ck["scaler"]["scale"] > 0 and "_growth_tracker" in ck["scaler"]
    else:
        assert ck["scaler"] == {}  # bf16 needs no loss scaling; the disabled scaler saves nothing
    assert ck["args"]["amp_dtype"] == dtype and ck["args"]["amp"] is True


def test_compile_mode_reduce_overhead_trains_with_cuda_graphs(cifar, tmp_path):
    summary = engine.train(parse_args([*flags(cifar, tmp_path, "--epochs", "1", "--device", CUDA, "--amp",
                                             "--compile-mode", "reduce-overhead")]))
    assert summary["steps"] == 4
    assert all(torch.isfinite(torch.tensor(list(step_losses(tmp_path).values()))))


def test_nccl_ddp_on_one_device_gives_the_plain_gradients(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            device_id=torch.device(CUDA, 0))
    try:
        assert dist.get_backend() == "nccl"
        t = torch.arange(4.0, device=CUDA)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        model = gaheads.create_model("ga2_cct_2_3x2_32", num_classes=10, drop_path_rate=0.0,
                                     attn_drop_rate=0.0).to(CUDA).train()
        plain = copy.deepcopy(model)
        ddp = DistributedDataParallel(model, device_ids=[0])
        x = torch.randn(8, 3, 32, 32, device=CUDA)
        ddp(x, return_branches=True).logsumexp(-1).mean().backward()
        plain(x, return_branches=True).logsumexp(-1).mean().backward()
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    finally:
        dist.destroy_process_group()


def test_resume_on_cuda_follows_the_uninterrupted_run(cifar, tmp_path):
    """Mid-epoch checkpoint, resume: the same loss at every later step, the same final weights
    (deterministic kernels; the prefetcher, bf16 autocast and channels-last on)."""
    extra = ["--device", CUDA, "--amp", "--channels-last", "--prefetcher", "--reprob", "0.25"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    mid = train_keeping(flags(cifar, ref, *extra), at_step=6)
    assert train_cli(flags(cifar, resumed, *extra, "--resume", str(mid))) == 0
    a, b = step_losses(ref), step_losses(resumed)
    later = [s for s in a if s > 6]
    assert later == [7, 8] and [s for s in b if s > 6] == later
    assert [b[s] for s in later] == pytest.approx([a[s] for s in later], rel=1e-6, abs=0)
    wa, wb = load_checkpoint(ref / "last.pth")["model"], load_checkpoint(resumed / "last.pth")["model"]
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-6, rtol=1e-5, msg=name)


def test_export_from_a_cuda_trained_checkpoint(cifar, tmp_path):
    from gaheads.export import check_onnx, export_onnx

    engine.train(parse_args([*flags(cifar, tmp_path / "run", "--epochs", "1", "--device", CUDA, "--amp")]))
    model = gaheads.load(tmp_path / "run" / "last.pth")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    path = export_onnx(model, tmp_path / "model.onnx", branches=True)
    assert check_onnx(path, model) < 1e-4
    # the weights give the same logits on the GPU as on the CPU
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        on_cpu = model.eval()(x)
        on_gpu = copy.deepcopy(model).to(CUDA)(x.to(CUDA)).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)
