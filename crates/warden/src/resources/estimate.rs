//! A service's memory before it has been measured: the configured size, or for
//! `memory = "auto"` on llama.cpp, from the GGUF file its command loads:
//! GPU: file size × gpu_layers / total_layers × 1.2; CPU: file size × 1.2.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::config::{Device, MemorySetting, ServiceConfig, ServiceKind};

pub fn estimate(cfg: &ServiceConfig) -> Option<u64> {
    match cfg.memory? {
        MemorySetting::Bytes(b) => Some(b),
        MemorySetting::Auto => auto(cfg),
    }
}

fn auto(cfg: &ServiceConfig) -> Option<u64> {
    let ServiceKind::Process(spec) = &cfg.kind else { return None };
    let args = &spec.command;
    let value_of = |names: &[&str]| -> Option<&String> {
        args.iter().position(|a| names.contains(&a.as_str())).and_then(|i| args.get(i + 1))
    };
    let model = value_of(&["-m", "--model"])?;
    let path = match (&spec.cwd, Path::new(model).is_relative()) {
        (Some(cwd), true) => cwd.join(model),
        _ => PathBuf::from(model),
    };
    let size = std::fs::metadata(&path).ok()?.len() as f64;
    let share = match cfg.device {
        Device::Cpu => 1.0,
        Device::Gpu => {
            let total = gguf_block_count(&path)? as f64;
            let gpu = value_of(&["-ngl", "--n-gpu-layers", "--gpu-layers"]).and_then(|v| v.parse::<f64>().ok());
            // llama.cpp's default offloads as many layers as fit; count them all.
            gpu.map_or(1.0, |g| (g / total).clamp(0.0, 1.0))
        }
    };
    Some((size * share * 1.2) as u64)
}

/// `{arch}.block_count` from a GGUF file's header.
pub fn gguf_block_count(path: &Path) -> Option<u64> {
    let mut r = BufReader::new(std::fs::File::open(path).ok()?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).ok()?;
    if &magic != b"GGUF" {
        return None;
    }
    let _version = read_u32(&mut r)?;
    let _tensors = read_u64(&mut r)?;
    let kvs = read_u64(&mut r)?;
    for _ in 0..kvs.min(100_000) {
        let key = read_string(&mut r)?;
        let kind = read_u32(&mut r)?;
        if key.ends_with(".block_count") {
            return read_int(&mut r, kind);
        }
        skip_value(&mut r, kind)?;
    }
    None
}

fn read_u32(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> Option<String> {
    let len = read_u64(r)?;
    if len > 1 << 20 {
        return None;
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b).ok()?;
    String::from_utf8(b).ok()
}

/// Width in bytes of GGUF's fixed-size value types.
fn width(kind: u32) -> Option<u64> {
    Some(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

fn read_int(r: &mut impl Read, kind: u32) -> Option<u64> {
    match kind {
        4 | 5 => read_u32(r).map(u64::from),
        10 | 11 => read_u64(r),
        _ => None,
    }
}

fn skip_value(r: &mut impl Read, kind: u32) -> Option<()> {
    match kind {
        8 => read_string(r).map(|_| ()),
        9 => {
            let item = read_u32(r)?;
            let len = read_u64(r)?;
            match width(item) {
                Some(w) => skip(r, w.checked_mul(len)?),
                None => (0..len).try_for_each(|_| skip_value(r, item)),
            }
        }
        k => skip(r, width(k)?),
    }
}

fn skip(r: &mut impl Read, n: u64) -> Option<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).ok()?;
    (copied == n).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF header: one string array, one string, then the block count.
    fn write_gguf(path: &Path, blocks: u32) {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        let key = |b: &mut Vec<u8>, k: &str| {
            b.extend_from_slice(&(k.len() as u64).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
        };
        key(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        key(&mut b, "a");
        key(&mut b, "bc");
        key(&mut b, "general.name");
        b.extend_from_slice(&8u32.to_le_bytes());
        key(&mut b, "tiny");
        key(&mut b, "llama.block_count");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&blocks.to_le_bytes());
        b.resize(b.len() + 10_000, 0);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn auto_estimates_from_the_gguf_file() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        write_gguf(&model, 8);
        assert_eq!(gguf_block_count(&model), Some(8));
        let size = std::fs::metadata(&model).unwrap().len() as f64;
        let text = String::from(
            "[services.l]\nkind = \"process\"\ncommand = [\"llama-server\", \"-m\", \"m.gguf\", \"-ngl\", \"2\"]\nmemory = \"auto\"\ndevice = \"gpu\"\n"
        );
        let cfg = crate::config::parse(&text, dir.path()).unwrap();
        assert_eq!(estimate(&cfg.services[0]), Some((size * 0.25 * 1.2) as u64));
        let cpu = crate::config::parse(&text.replace("\"gpu\"", "\"cpu\""), dir.path()).unwrap();
        assert_eq!(estimate(&cpu.services[0]), Some((size * 1.2) as u64));
        let missing = crate::config::parse(&text.replace("m.gguf", "nope.gguf"), dir.path()).unwrap();
        assert_eq!(estimate(&missing.services[0]), None);
        assert_eq!(gguf_block_count(&dir.path().join("nope")), None);
    }
}
