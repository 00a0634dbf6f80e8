#!/usr/bin/env python3
"""The two halves of scripts/hot-text.sh.

`watch --exe EXE --after S --out FILE`: wait S seconds, find the newest process running EXE
(which scripts/hot-text/probe.c has prepared: one VMA per code page), and until it exits
record the file offsets of its resident code pages (/proc/<pid>/pagemap, bit 63: present).

`generate --exe EXE --out LD PAGES...`: map each workload's pages to the functions on them
(`nm -S` of the unstripped EXE), group the functions by which workloads run them, those most
run first, and write the linker script (glob patterns of their input sections: the hashes in
Rust symbols are wildcards). Prints the predicted resident code per workload against the
address order of today's layout.
"""
import argparse, os, re, struct, subprocess, sys, time
from collections import defaultdict

PAGE = 4096
WINDOW = 64 * 1024  # the kernel's default fault_around_bytes


def code_pages(pid, exe):
    pages = set()
    with open(f'/proc/{pid}/pagemap', 'rb') as pm, open(f'/proc/{pid}/maps') as maps:
        for line in maps:
            f = line.split()
            if len(f) >= 6 and f[5] == exe and 'x' in f[1]:
                a, b = (int(x, 16) for x in f[0].split('-'))
                off, n = int(f[2], 16), (b - a) // PAGE
                pm.seek(a // PAGE * 8)
                data = pm.read(n * 8)
                # A process that is exiting has its mappings torn down under us: short reads.
                n = min(n, len(data) // 8)
                pages |= {off + i * PAGE for i in range(n)
                          if struct.unpack_from('<Q', data, i * 8)[0] >> 63}
    return pages


def newest(exe):
    found = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                if os.readlink(f'/proc/{d}/exe') == exe:
                    found.append(int(d))
            except OSError:
                pass
    return max(found) if found else None


def watch(a):
    time.sleep(a.after)
    pid = newest(a.exe)
    if pid is None:
        sys.exit(f'no process runs {a.exe}')
    seen = set()
    while True:
        try:
            seen |= code_pages(pid, a.exe)
        except OSError:
            break
        time.sleep(0.5)
    with open(a.out, 'w') as f:
        f.writelines(f'{o}\n' for o in sorted(seen))
    print(f'{a.out}: {len(seen)} code pages run ({len(seen) * PAGE // 1024} KB)')


def glob(name):
    """The pattern of a symbol's section in any build: its hashes are wildcards, and so is a
    suffix, which LLVM adds in one build and not another (`.llvm.<hash>` for a local function
    made global by LTO, `.cold`, `.specialized.1`)."""
    name = re.sub(r'\.(llvm|cold|specialized|constprop|part)\..*$', '', name) + '*'
    if name.startswith('_ZN'):
        return re.sub(r'17h[0-9a-f]{16}E\*$', '17h*', name)
    if name.startswith('_R'):
        # v0 (RFC 2603): crate disambiguators are hashes, and back-references are offsets
        # into the name that move with the hashes' lengths.
        name = re.sub(r'Cs[0-9A-Za-z]+_', 'Cs*_', name)
        return re.sub(r'B[0-9A-Za-z]{0,4}_', 'B*_', name)
    return name


def generate(a):
    out = subprocess.run(['readelf', '-lW', a.exe], capture_output=True, text=True, check=True)
    text = next(l.split() for l in out.stdout.splitlines() if 'LOAD' in l and ' R E ' in l)
    delta = int(text[2], 16) - int(text[1], 16)  # file offset -> address
    work = [{int(x) + delta for x in open(p)} for p in a.pages]
    out = subprocess.run(['nm', '-S', '-n', '--defined-only', a.exe], capture_output=True,
                         text=True, check=True)
    fns, everything = {}, defaultdict(list)
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in 'tTwW' and int(f[1], 16) > 0:
            addr, size = int(f[0], 16), int(f[1], 16)
            everything[glob(f[3])].append((addr, size, f[3]))
            pages = range(addr & ~(PAGE - 1), ((addr + size - 1) & ~(PAGE - 1)) + 1, PAGE)
            runs = frozenset(i for i, w in enumerate(work) if any(p in w for p in pages))
            if runs:
                fns[f[3]] = (addr, size, runs)

    def predicted(layout):
        """KB resident per workload: `layout` is (size, runs) in the order of the code."""
        pos, windows = 0, [set() for _ in work]
        for size, runs in layout:
            for i in runs:
                windows[i].update(range(pos // WINDOW, (pos + size - 1) // WINDOW + 1))
            pos += size
        return [len(w) * WINDOW // 1024 for w in windows], pos

    groups = defaultdict(list)
    for n, (_, _, runs) in fns.items():
        groups[runs].append(n)
    order = []
    for runs in sorted(groups, key=lambda g: (-len(g), sorted(g))):
        order += sorted(groups[runs], key=lambda n: fns[n][0])
    # A pattern takes every function of its name: the instantiations of a generic one differ
    # only in the hash. One that would take much more code than runs stays out of the list.
    patterns, layout, left_out = [], [], 0
    stay = [set() for _ in work]  # windows of the run functions left where they are
    for n in order:
        g = glob(n)
        if g in patterns:
            continue
        matched = everything[g]
        ran = sum(fns[m][1] for _, _, m in matched if m in fns)
        if sum(size for _, size, _ in matched) > 2 * ran + 4096:
            left_out += 1
            for addr, size, m in matched:
                if m in fns:
                    for i in fns[m][2]:
                        stay[i].update(range(addr // WINDOW, (addr + size - 1) // WINDOW + 1))
            continue
        patterns.append(g)
        layout += [(size, fns[m][2] if m in fns else frozenset()) for _, size, m in sorted(matched)]
    packed, total = predicted(layout)
    packed = [k + len(w) * WINDOW // 1024 for k, w in zip(packed, stay)]
    print(f'{len(fns)} functions on the pages run; {len(patterns)} patterns take {total // 1024} KB'
          f' ({left_out} left out: they would take far more than runs)')
    print('KB run per workload:          ', [len(w) * PAGE // 1024 for w in work])
    print('KB resident, packed (predicted):', packed)
    print('KB resident, this binary:       ', [len({p // WINDOW for p in w}) * WINDOW // 1024
                                                 for w in work])
    with open(a.out, 'w') as f:
        f.write(HEADER)
        f.writelines(f'    *(.text.{p})\n' for p in patterns)
        f.write('  }\n}\nINSERT BEFORE .text;\n')
    print(f'{a.out}: written')


HEADER = """\
/* The functions the running gateway executes, placed together at the start of the code, so
 * that fault-around maps few neighbours that never run (build.rs says why; README, Measurements,
 * gives the figures). Generated by `bash scripts/hot-text.sh`: do not edit by hand. Patterns
 * name input sections (one per function); the hash in a Rust symbol is a wildcard, so the list
 * holds across builds. Ordered by how many of the measured workloads run a function, most
 * first. */
SECTIONS
{
  .text.hot : {
"""

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest='cmd', required=True)
    w = sub.add_parser('watch')
    w.add_argument('--exe', required=True)
    w.add_argument('--after', type=float, default=9)
    w.add_argument('--out', required=True)
    g = sub.add_parser('generate')
    g.add_argument('--exe', required=True)
    g.add_argument('--out', required=True)
    g.add_argument('pages', nargs='+')
    a = p.parse_args()
    watch(a) if a.cmd == 'watch' else generate(a)
