//! What the host offers: cores, memory, free disk.

use std::path::Path;

use goat_storage::model::Resources;

/// The machine's capacity: cores, memory, and free disk under `data_dir`.
pub fn detect_capacity(data_dir: &Path) -> Resources {
    let cpu = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| parse_meminfo(&text)).unwrap_or(0);
    let disk = free_disk(data_dir).unwrap_or(0);
    Resources { cpu, memory, disk }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes available to unprivileged users on the filesystem of `path`.
fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs the call fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Lowers a detected capacity by the operator's limits.
pub fn limit_capacity(detected: Resources, cpus: Option<f64>, memory: Option<u64>, disk: Option<u64>) -> Resources {
    Resources {
        cpu: cpus.map_or(detected.cpu, |c| c.min(detected.cpu)),
        memory: memory.map_or(detected.memory, |m| m.min(detected.memory)),
        disk: disk.map_or(detected.disk, |d| d.min(detected.disk)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16303872 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo(text), Some(16_303_872 * 1024));
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn capacity_is_detected_and_lowered() {
        let dir = tempfile::tempdir().unwrap();
        let detected = detect_capacity(dir.path());
        assert!(detected.cpu >= 1.0);
        assert!(detected.memory > 0);
        assert!(detected.disk > 0);
        let limited = limit_capacity(detected, Some(0.5), Some(1024), None);
        assert_eq!(limited.cpu, 0.5);
        assert_eq!(limited.memory, 1024);
        assert_eq!(limited.disk, detected.disk);
        // Limits never raise the capacity.
        let raised = limit_capacity(detected, Some(10_000.0), None, None);
        assert_eq!(raised.cpu, detected.cpu);
    }
}
