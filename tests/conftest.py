import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _refuse_the_internet() -> None:
    """No test reaches the internet, not even as a fallback: a connection to anything but this
    machine (loopback, a local socket) raises at once instead of hanging or downloading."""
    import ipaddress
    import socket

    connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                raise ConnectionRefusedError(f"tests must not reach the network (tried {address}); "
                                             f"a loader downloads only with download=True / CL_PEFT_DOWNLOAD=1")
        return connect(self, address)

    socket.socket.connect = guarded


_refuse_the_internet()


def make_toy_scenario(kind: str = "class", num_tasks: int = 2, per_class: int = 24, classes: int = 4, seed: int = 0,
                      size: int = 16):
    """A tiny, easy synthetic scenario: each class is a distinct intensity pattern (plus noise).

    Class-incremental: ``classes`` classes split into ``num_tasks`` tasks. Domain-incremental:
    ``num_tasks`` domains of the same ``classes`` classes, each domain with its own strong
    shift (brightness offset and pattern orientation), so domains are separable too.
    """
    from cl_peft_lib.data.base import TensorImageDataset
    from cl_peft_lib.data.scenarios import class_incremental, domain_incremental

    g = torch.Generator().manual_seed(seed)

    def images(c: int, n: int, domain: int = 0) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        freq = 1 + c
        pat = (torch.sin(xx * freq * 0.4) if domain % 2 == 0 else torch.sin(yy * freq * 0.4)) * 0.5 + 0.5
        base = pat * 150 + 40 * domain
        noise = torch.randn(n, 1, size, size, generator=g) * 15
        return (base + noise).clamp(0, 255).to(torch.uint8)

    def split(domain: int = 0):
        xs, ys = [], []
        for c in range(classes):
            xs.append(images(c, per_class, domain))
            ys.append(torch.full((per_class,), c))
        return TensorImageDataset(torch.cat(xs), torch.cat(ys), f"toy{domain}")

    if kind == "class":
        return class_incremental("toy-cil", split(), split(), [f"c{i}" for i in range(classes)], num_tasks, seed,
                                 class_order=list(range(classes)))
    doms = [(f"d{d}", split(d), split(d)) for d in range(num_tasks)]
    return domain_incremental("toy-dil", doms, [f"c{i}" for i in range(classes)])


@pytest.fixture
def toy_scenario():
    return make_toy_scenario
