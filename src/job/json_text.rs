//! A JSON string literal written byte for byte as `serde_json` writes it,
//! for the one hot path of the event log: `cmd_output` text, which can be
//! hundreds of megabytes. Runs of bytes that need no escape (most of any
//! output) are found eight at a time and copied whole.
//!
//! It knows JSON strings only, nothing of events.

/// Every byte of a word set to `b`.
const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

const LOW: u64 = splat(0x01);
const HIGH: u64 = splat(0x80);

/// Whether any byte of `word` is below `n` (n <= 128).
fn has_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(splat(n)) & !word & HIGH != 0
}

/// Whether any byte of `word` is zero.
fn has_zero(word: u64) -> bool {
    word.wrapping_sub(LOW) & !word & HIGH != 0
}

/// Whether a byte must be escaped in a JSON string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `text` as a JSON string literal, quotes included.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if !has_below(word, 0x20)
                && !has_zero(word ^ splat(b'"'))
                && !has_zero(word ^ splat(b'\\'))
            {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            if needs_escape(b) {
                out.extend_from_slice(&bytes[copied..i]);
                push_escape(out, b);
                copied = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(text: &str) -> String {
        let mut out = Vec::new();
        push_json_string(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_same_bytes_as_serde_json() {
        let mut samples: Vec<String> = vec![
            String::new(),
            "plain ascii text of some length, more than eight bytes".into(),
            "quote \" backslash \\ slash / tab \t cr \r lf \n".into(),
            "é€😀 \u{2028}\u{2029} \u{7f} \u{fffd}".into(),
        ];
        // Every byte that may need an escape, at every offset in a word.
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut s = "a".repeat(at);
                s.push(b as char);
                s.push_str("tail bytes");
                samples.push(s);
            }
        }
        for s in samples {
            assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }
}
