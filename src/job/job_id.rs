//! The rule a job id must follow (docs/protocol.md §3.1): 1 to
//! [`MAX_JOB_ID_LEN`] characters of `[A-Za-z0-9._-]`. UUIDs and the ids of
//! every known control plane fit; what does not would need percent-encoding
//! in `/jobs/{job_id}/...`, or could not be part of a file name or a
//! command line, so it is refused when the job is submitted. Paths are then
//! compared byte for byte: an id that needs decoding matches no job.

/// The longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 128;

/// The rule in words, for the messages that refuse an id.
pub const JOB_ID_RULE: &str = "1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'";

/// Whether `id` follows the rule.
pub fn is_valid_job_id(id: &str) -> bool {
    (1..=MAX_JOB_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_plain_ids_pass() {
        for id in [
            "0b5a7d0e-54b3-4bd6-a4f5-3c1b9b0f2f0e",
            "job",
            "a.b_c-D9",
            &"x".repeat(128),
        ] {
            assert!(is_valid_job_id(id), "{id}");
        }
    }

    #[test]
    fn ids_that_need_encoding_fail() {
        for id in [
            "",
            "space id",
            "a/b",
            "quote\"",
            "back\\slash",
            "nul\0",
            "é",
            "100%",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_job_id(id), "{id:?}");
        }
    }
}
