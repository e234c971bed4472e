//! Output chunking (docs/protocol.md §6.2): turns the raw bytes a command prints on
//! its terminal into `cmd_output` strings.
//!
//! Rules kept here: a chunk never ends inside a UTF-8 sequence that may still
//! be completed, nor between the `\r` and `\n` of a pair; `\r\n` becomes `\n`;
//! every byte that is not valid UTF-8 becomes one U+FFFD. When to flush (the
//! 100 ms latency bound) is decided by the caller, which owns the clock.
//! Secret values are masked here too, before any byte leaves the buffer.

use std::sync::Arc;

/// The largest chunk emitted while a command runs. Larger chunks mean fewer
/// events and less JSON overhead under sustained output.
pub const MAX_CHUNK: usize = 64 * 1024;

/// What a secret value becomes in the log (docs/protocol.md §13.3).
pub const MASK: &[u8] = b"[MASKED]";

#[derive(Debug, Default)]
pub struct Chunker {
    buf: Vec<u8>,
    /// Values to mask, longest first.
    secrets: Arc<Vec<Vec<u8>>>,
}

impl Chunker {
    #[cfg(test)]
    pub fn new() -> Chunker {
        Chunker::with_secrets(Arc::default())
    }

    /// A chunker that replaces each of `secrets` with `[MASKED]`, also when a
    /// value arrives split across reads: a tail that may be the start of a
    /// secret is held back like an unfinished character.
    pub fn with_secrets(secrets: Arc<Vec<Vec<u8>>>) -> Chunker {
        Chunker {
            buf: Vec::with_capacity(4096),
            secrets,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// A full chunk, if at least `MAX_CHUNK` bytes are buffered.
    pub fn take_full(&mut self) -> Option<String> {
        if self.buf.len() < MAX_CHUNK {
            return None;
        }
        let mut cut = self.hold_secret_prefix(safe_cut(&self.buf[..MAX_CHUNK]));
        if cut == 0 {
            // Cannot happen with a 64 KiB window (a held-back tail is at most
            // 4 bytes), but never loop without progress.
            cut = MAX_CHUNK;
        }
        Some(self.take(cut))
    }

    /// Everything that can be emitted without splitting a character or a
    /// `\r\n` pair; the held-back tail (at most 4 bytes) stays buffered.
    pub fn take_settled(&mut self) -> Option<String> {
        let cut = self.hold_secret_prefix(safe_cut(&self.buf));
        (cut > 0).then(|| self.take(cut))
    }

    /// Moves `cut` back before a tail of `buf[..cut]` that may be the start
    /// of a secret.
    fn hold_secret_prefix(&self, cut: usize) -> usize {
        let mut held = 0;
        for secret in self.secrets.iter() {
            let max = (secret.len() - 1).min(cut);
            for n in (held + 1..=max).rev() {
                if self.buf[cut - n..cut] == secret[..n] {
                    held = n;
                    break;
                }
            }
        }
        cut - held
    }

    /// Everything that waited long enough, an unfinished character
    /// included, except a tail that may be the start of a secret: masking
    /// wins over the latency bound.
    pub fn take_forced(&mut self) -> Option<String> {
        let cut = self.hold_secret_prefix(self.buf.len());
        (cut > 0).then(|| self.take(cut))
    }

    /// Everything, including an unfinished tail (whose bytes then each
    /// become U+FFFD, or a lone `\r` kept as is).
    pub fn take_all(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take(self.buf.len()))
    }

    fn take(&mut self, n: usize) -> String {
        let s = if self.secrets.is_empty() {
            render(&self.buf[..n])
        } else {
            render(&mask(&self.buf[..n], &self.secrets))
        };
        self.buf.drain(..n);
        s
    }
}

/// Replaces every occurrence of a secret (longest first) with `[MASKED]`.
pub fn mask(bytes: &[u8], secrets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        for secret in secrets {
            if bytes[i..].starts_with(secret) {
                out.extend_from_slice(MASK);
                i += secret.len();
                continue 'outer;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The length of the longest prefix of `bytes` that ends neither inside a
/// UTF-8 sequence that may still be completed nor on a `\r` that may be
/// followed by `\n`.
pub fn safe_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    if len == 0 {
        return 0;
    }
    if bytes[len - 1] == b'\r' {
        return safe_cut(&bytes[..len - 1]);
    }
    // Look back at most 3 bytes for the lead byte of an unfinished sequence.
    let start = len.saturating_sub(3);
    for i in (start..len).rev() {
        let b = bytes[i];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for its lead
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return len, // ASCII or an invalid lead: nothing to complete
        };
        let have = len - i;
        if have >= need {
            return len;
        }
        // Only hold back a prefix that really may still become valid.
        return if std::str::from_utf8(&bytes[i..])
            .err()
            .and_then(|e| e.error_len())
            .is_none()
        {
            i
        } else {
            len
        };
    }
    len
}

/// Renders terminal bytes as text: `\r\n` folded to `\n`, one U+FFFD per
/// invalid byte.
pub fn render(bytes: &[u8]) -> String {
    to_text(bytes, push_folded)
}

/// Bytes as text, changed only where they are not UTF-8: one U+FFFD per
/// invalid byte. For output that never crossed a terminal (§6.2).
pub fn decode(bytes: &[u8]) -> String {
    to_text(bytes, String::push_str)
}

fn to_text(bytes: &[u8], push: fn(&mut String, &str)) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push(&mut out, s);
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                push(&mut out, std::str::from_utf8(&rest[..valid]).unwrap_or(""));
                let bad = e.error_len().unwrap_or(rest.len() - valid);
                for _ in 0..bad {
                    out.push('\u{FFFD}');
                }
                rest = &rest[valid + bad..];
            }
        }
    }
    out
}

/// Folds `\r\n` into `\n`. A run of `\r` before a newline counts as one:
/// the terminal turns a printed `\r\n` into `\r\r\n`, and a carriage
/// return right before a newline shows nothing anyway.
fn push_folded(out: &mut String, s: &str) {
    if !s.contains("\r\n") {
        out.push_str(s);
        return;
    }
    let mut lines = s.split('\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_some() {
            out.push_str(line.trim_end_matches('\r'));
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_is_folded_and_lone_cr_kept() {
        assert_eq!(render(b"a\r\nb\rc\r\n"), "a\nb\rc\n");
        assert_eq!(render(b"a\r\r\nb\r"), "a\nb\r");
    }

    #[test]
    fn decoding_keeps_every_valid_byte() {
        assert_eq!(decode(b"a\r\nb\r\r\n"), "a\r\nb\r\r\n");
        assert_eq!(decode(&[b'x', 0x96, 0x96, b'\n']), "x\u{FFFD}\u{FFFD}\n");
    }

    #[test]
    fn each_invalid_byte_is_one_replacement() {
        assert_eq!(render(&[0x96; 5]), "\u{FFFD}".repeat(5));
        // A truncated 3-byte sequence followed by ASCII: two bytes, two marks.
        assert_eq!(render(&[0xE2, 0x82, b'A']), "\u{FFFD}\u{FFFD}A");
        assert_eq!(render("é€😀".as_bytes()), "é€😀");
    }

    #[test]
    fn cut_never_splits_a_character_or_crlf() {
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(safe_cut(&[b'a', euro[0]]), 1);
        assert_eq!(safe_cut(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(safe_cut(&[b'a', euro[0], euro[1], euro[2]]), 4);
        assert_eq!(safe_cut(b"ab\r"), 2);
        assert_eq!(safe_cut(b"ab\r\n"), 4);
        // Invalid bytes are never held back waiting for completion.
        assert_eq!(safe_cut(&[b'a', 0x96]), 2);
        assert_eq!(safe_cut(&[b'a', 0xE2, b'b']), 3);
        assert_eq!(safe_cut(&[0xFF]), 1);
        let emoji = "😀".as_bytes();
        assert_eq!(safe_cut(&emoji[..3]), 0);
    }

    /// Feeds `bytes` in two reads split at `split`, taking what is settled
    /// in between, and returns everything emitted.
    fn feed_split(mut c: Chunker, bytes: &[u8], split: usize) -> String {
        let mut out = String::new();
        c.push(&bytes[..split]);
        if let Some(s) = c.take_settled() {
            out.push_str(&s);
        }
        c.push(&bytes[split..]);
        if let Some(s) = c.take_all() {
            out.push_str(&s);
        }
        out
    }

    #[test]
    fn chunker_reassembles_split_characters() {
        let text = "héllo wörld €😀\r\nnext\r\n";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let out = feed_split(Chunker::new(), bytes, split);
            assert_eq!(out, "héllo wörld €😀\nnext\n", "split at {split}");
        }
    }

    #[test]
    fn secrets_are_masked_across_any_split() {
        let secrets = Arc::new(vec![b"hunter22".to_vec(), b"s3cr".to_vec()]);
        let text = b"pw=hunter22 and s3cr, hunter2 stays\n";
        for split in 0..text.len() {
            let out = feed_split(Chunker::with_secrets(Arc::clone(&secrets)), text, split);
            assert_eq!(
                out, "pw=[MASKED] and [MASKED], hunter2 stays\n",
                "split at {split}"
            );
        }
        // A pause in the middle of a secret does not let its start out.
        let mut c = Chunker::with_secrets(secrets);
        c.push(b"x hunt");
        assert_eq!(c.take_forced().unwrap(), "x ");
        assert!(c.take_forced().is_none());
        c.push(b"er22\n");
        assert_eq!(c.take_all().unwrap(), "[MASKED]\n");
    }

    #[test]
    fn full_chunks_are_bounded() {
        let mut c = Chunker::new();
        c.push(&vec![b'a'; MAX_CHUNK * 2 + 10]);
        assert_eq!(c.take_full().unwrap().len(), MAX_CHUNK);
        assert_eq!(c.take_full().unwrap().len(), MAX_CHUNK);
        assert!(c.take_full().is_none());
        assert_eq!(c.take_all().unwrap().len(), 10);
        assert!(c.is_empty());
    }

    #[test]
    fn unfinished_tail_becomes_replacements_at_the_end() {
        let mut c = Chunker::new();
        c.push(&"€".as_bytes()[..2]);
        assert!(c.take_settled().is_none());
        assert_eq!(c.take_all().unwrap(), "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn sustained_output_comes_in_64_kib_chunks() {
        // docs/protocol.md §6.2: an event carries up to 64 KiB.
        let mut c = Chunker::new();
        c.push(&vec![b'a'; 64 * 1024 - 1]);
        assert_eq!(c.len(), 64 * 1024 - 1);
        assert!(c.take_full().is_none());
        c.push(b"b");
        assert_eq!(c.take_full().unwrap().len(), 64 * 1024);
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_full_chunk_ends_before_a_character_it_would_split() {
        let mut c = Chunker::new();
        c.push(&vec![b'a'; MAX_CHUNK - 1]);
        c.push("€".as_bytes());
        assert!(!c.is_empty());
        assert_eq!(c.take_full().unwrap(), "a".repeat(MAX_CHUNK - 1));
        assert_eq!(c.len(), 3);
        assert_eq!(c.take_all().unwrap(), "€");
    }

    #[test]
    fn settled_text_and_whole_secrets_are_not_held_back() {
        let mut c = Chunker::with_secrets(Arc::new(vec![b"hunter22".to_vec()]));
        c.push(b"pw=hunter22");
        assert_eq!(c.take_settled().unwrap(), "pw=[MASKED]");
        c.push(b"ok hunter22");
        assert_eq!(c.take_forced().unwrap(), "ok [MASKED]");
        assert!(c.is_empty());
    }

    #[test]
    fn a_character_cut_short_after_text_gives_one_replacement_per_byte() {
        assert_eq!(render(b"ab\xE2\x82"), "ab\u{FFFD}\u{FFFD}");
        let mut c = Chunker::new();
        c.push(b"ok \xF0\x9F\x98");
        assert_eq!(c.take_settled().unwrap(), "ok ");
        assert_eq!(c.take_all().unwrap(), "\u{FFFD}".repeat(3));
    }
}
