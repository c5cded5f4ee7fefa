"""The user-space side of the front-end's kernel path (bpf/frontend.bpf.c): the program's maps and
ring buffer (maps.py), the rule compiler that turns the config's rules into the kernel's step
program (rules.py), and the hand-over records both layers exchange (handover.py). The engine's side
of the hand-over is frontend/engine/kernel_side.py."""
