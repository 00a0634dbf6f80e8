//! Giving start-up memory back to the kernel at the few moments that leave much of it.
//!
//! Loading and compiling a mapping allocates far more than the running gateway keeps: the YAML
//! events, the raw documents, the expanded templates. glibc's allocator keeps freed memory in
//! its arenas for reuse, so without help that start-up garbage stays in the resident set for the
//! life of the process (measured at 1,000 points: 3.7 MB of heap pages of which 0.55 MB in
//! use). [`release_free_memory`] runs glibc's `malloc_trim(0)`, which since glibc 2.8 returns
//! every free whole page of every arena (`madvise(MADV_DONTNEED)`), not only the top of the
//! main heap (Linux man-pages, `malloc_trim(3)`, NOTES). The gateway calls it once the links
//! are started and after each reload: never on the hot path.
//!
//! The same moments leave the code that only start-up ran mapped: the YAML parser, the
//! mapping's deserializers and compiler, the command line, TLS set-up. Those pages belong to the
//! executable file; the process keeps them in its resident set (`RssFile`) for its whole life,
//! with the neighbours the kernel maps around every fault. Measured at 1,000 points (release
//! build, `bench_e2e` 1000@1): the executable's code was 9.1 MB resident, of which 0.8 MB was
//! referenced in five seconds of steady polling. [`release_clean_file_pages`] unmaps the pages of
//! the executable and its start-up libraries that are identical to their file
//! (`madvise(MADV_DONTNEED)`, Linux man-pages `madvise(2)`: a private mapping's next access
//! "repopulates the memory contents from the up-to-date contents of the underlying mapped
//! file"); the code the gateway keeps running faults back in from the page cache within a
//! cycle. The pages stay in the page cache, shared and reclaimable: this shrinks the process's
//! resident set (what `ps`, `top` and our benchmark report), not the kernel's file cache.

use std::sync::OnceLock;

/// Return the heap's free pages to the kernel. Returns `true` when glibc released memory,
/// `false` when there was nothing to release or the target's C library is not glibc (then it
/// does nothing). Takes time in proportion to the heap: measured 0.04–0.13 ms at 1,000 points
/// and 0.2–0.5 ms at 10,000; each arena is locked only while it is walked.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes a padding size and touches only the allocator's own
        // free lists, under each arena's lock; it is safe to call from any thread at any
        // time (glibc malloc/malloc.c, `__malloc_trim`).
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The files mapped before the program started any thread: the executable and the shared
/// objects the dynamic linker loaded for it (its `DT_NEEDED` closure). Those stay mapped, at
/// the same addresses, until the process exits; files mapped later (a `dlopen`ed NSS module,
/// `/etc/ld.so.cache` during one) may be unmapped and their addresses reused at any time, so
/// [`release_clean_file_pages`] never touches them.
static STARTUP_OBJECTS: OnceLock<Vec<String>> = OnceLock::new();

/// Record the files mapped now as the start-up objects. Call it first thing in `main`, before
/// any thread or runtime starts; a second call keeps the first record. Without the record,
/// [`release_clean_file_pages`] does nothing.
pub fn note_startup_objects() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|line| mapping_header(line).map(|h| h.path.to_owned()))
        .filter(|path| path.starts_with('/'))
        .collect();
    paths.sort();
    paths.dedup();
    let _ = STARTUP_OBJECTS.set(paths);
}

/// Unmap the pages of the start-up objects' read-only private mappings (code, constants) that
/// hold no private copy, so that only what runs from now on faults back in. Returns the
/// resident bytes those mappings held before the call (`Rss` in `/proc/self/smaps`, 0 when
/// there was no record or nothing to release). Its cost is one read of `/proc/self/smaps` and
/// one `madvise` per mapping, then minor faults as the running code comes back; it is called
/// at start-up, 5 s later and after reloads, never on the hot path. Linux only; elsewhere it
/// does nothing.
pub fn release_clean_file_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Some(objects) = STARTUP_OBJECTS.get() else {
            return 0;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released = 0;
        for m in clean_file_mappings(&smaps, objects) {
            // SAFETY: the range is one whole mapping of a start-up object, which stays mapped
            // at this address until exit (see `STARTUP_OBJECTS`), private, not writable, and
            // with no anonymous (copied-on-write) page: every page equals the file's. Dropping
            // such pages loses nothing; the next access maps them again from the page cache
            // (madvise(2), MADV_DONTNEED). No Rust object lives in these pages.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc == 0 {
                released += m.rss;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// One mapping's header line in `/proc/<pid>/maps` or `smaps`: `start-end perms offset dev
/// inode path` (proc(5), `/proc/pid/maps`); the path may hold spaces and is empty for an
/// anonymous mapping.
#[derive(Debug, PartialEq)]
struct MappingHeader<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    path: &'a str,
}

/// Parse a header line; `None` for any other line (smaps' `Key: value` lines).
fn mapping_header(line: &str) -> Option<MappingHeader<'_>> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let mut fields = rest.splitn(5, ' ');
    let perms = fields.next()?;
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().unwrap_or("").trim_start();
    Some(MappingHeader {
        start,
        end,
        perms,
        path,
    })
}

/// A mapping [`release_clean_file_pages`] may drop, and its resident bytes.
#[derive(Debug, PartialEq)]
struct CleanMapping {
    start: usize,
    end: usize,
    rss: usize,
}

/// The mappings in `smaps` (the text of `/proc/self/smaps`) that belong to one of `objects`,
/// are private and read-only (`r--p`, `r-xp`), and have `Anonymous: 0 kB`.
fn clean_file_mappings(smaps: &str, objects: &[String]) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    let mut current: Option<CleanMapping> = None;
    let mut rss = 0;
    for line in smaps.lines() {
        if let Some(h) = mapping_header(line) {
            let eligible = matches!(h.perms, "r--p" | "r-xp")
                && objects.binary_search_by(|o| o.as_str().cmp(h.path)).is_ok();
            current = eligible.then_some(CleanMapping {
                start: h.start,
                end: h.end,
                rss: 0,
            });
            rss = 0;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kb = || {
            value
                .trim()
                .strip_suffix(" kB")
                .and_then(|v| v.parse::<usize>().ok())
        };
        match key {
            "Rss" => rss = kb().unwrap_or(0) * 1024,
            "Anonymous" => {
                if let Some(mut m) = current.take()
                    && kb() == Some(0)
                {
                    m.rss = rss;
                    out.push(m);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 1234 /usr/bin/fieldgate
Rss:                 400 kB
Anonymous:             0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fe:01 1234 /usr/bin/fieldgate
Size:               8192 kB
Rss:                6000 kB
Anonymous:             0 kB
55d0a0900000-55d0a0980000 r--p 00900000 fe:01 1234 /usr/bin/fieldgate
Rss:                 440 kB
Anonymous:           440 kB
55d0a0980000-55d0a0981000 rw-p 00980000 fe:01 1234 /usr/bin/fieldgate
Rss:                   4 kB
Anonymous:             4 kB
7f0000000000-7f0000100000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--p 00000000 fe:01 77 /etc/ld.so.cache
Rss:                  60 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 fe:01 55 /opt/my tools/libx.so (deleted)
Rss:                  12 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn headers_are_parsed_with_paths_that_hold_spaces() {
        let h = mapping_header(
            "7f0000400000-7f0000500000 r-xp 00000000 fe:01 55 /opt/my tools/libx.so (deleted)",
        );
        assert_eq!(
            h,
            Some(MappingHeader {
                start: 0x7f00_0040_0000,
                end: 0x7f00_0050_0000,
                perms: "r-xp",
                path: "/opt/my tools/libx.so (deleted)",
            })
        );
        let anon = mapping_header("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, "");
        assert_eq!(mapping_header("Rss:                 400 kB"), None);
    }

    /// Only the start-up objects' read-only mappings without private copies are dropped:
    /// never the relocated (copied) constants, a writable mapping, a file mapped later
    /// (`/etc/ld.so.cache`) or the vDSO.
    #[test]
    fn only_clean_read_only_mappings_of_startup_objects_are_chosen() {
        let mut objects = vec![
            "/usr/bin/fieldgate".to_owned(),
            "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
            "/opt/my tools/libx.so (deleted)".to_owned(),
        ];
        objects.sort();
        let chosen = clean_file_mappings(SMAPS, &objects);
        assert_eq!(
            chosen,
            vec![
                CleanMapping {
                    start: 0x55d0_a000_0000,
                    end: 0x55d0_a010_0000,
                    rss: 400 * 1024
                },
                CleanMapping {
                    start: 0x55d0_a010_0000,
                    end: 0x55d0_a090_0000,
                    rss: 6000 * 1024
                },
                CleanMapping {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0010_0000,
                    rss: 900 * 1024
                },
                CleanMapping {
                    start: 0x7f00_0040_0000,
                    end: 0x7f00_0050_0000,
                    rss: 12 * 1024
                },
            ]
        );
    }

    /// The test binary's own code, touched by the harness and the tests so far, leaves the
    /// resident set and comes back as it runs.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_executables_clean_pages_leave_the_resident_set() {
        note_startup_objects();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy().into_owned();
        let resident = || -> usize {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            clean_file_mappings(&smaps, std::slice::from_ref(&exe))
                .iter()
                .map(|m| m.rss)
                .sum()
        };
        let before = resident();
        assert!(
            before > 256 * 1024,
            "the test binary's code is resident: {before} bytes"
        );
        let released = release_clean_file_pages();
        assert!(released >= before, "released {released} of {before} bytes");
        let after = resident();
        assert!(
            after < before,
            "resident after the release: {after} of {before} bytes"
        );
    }

    /// Freed small allocations stay in glibc's arena until trimmed; the call gives them back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_heap_pages_are_released() {
        // 16 MiB in 4 KiB blocks (below the mmap threshold, so they live in the arena), the
        // last one kept so the freed pages are not at the top of the heap.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4096]).collect();
        let keep = blocks.pop();
        drop(blocks);
        assert!(release_free_memory(), "glibc had freed pages to release");
        drop(keep);
    }
}
