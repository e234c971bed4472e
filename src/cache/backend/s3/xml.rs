//! The bits of S3's XML that `rusty-s3` does not read: the uploads of a
//! ListMultipartUploads answer, and an error's code and message.

use crate::cache::aws;

/// An upload in progress, as ListMultipartUploads shows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Upload {
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) initiated_ms: Option<u64>,
}

/// The `<Upload>` elements of a ListMultipartUploads answer.
pub(super) fn parse_uploads(xml: &str) -> Vec<Upload> {
    let mut uploads = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Upload>") {
        let after = &rest[start + "<Upload>".len()..];
        let Some(end) = after.find("</Upload>") else {
            break;
        };
        let element = &after[..end];
        if let (Some(key), Some(upload_id)) = (tag(element, "Key"), tag(element, "UploadId")) {
            uploads.push(Upload {
                key,
                upload_id,
                initiated_ms: tag(element, "Initiated").and_then(|t| aws::iso8601_ms(&t)),
            });
        }
        rest = &after[end..];
    }
    uploads
}

/// The text of the first `<name>` element of `xml`, entities decoded.
pub(super) fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(unescape(&xml[start..end]))
}

pub(super) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An S3 error body's code and message.
pub(super) fn xml_error(xml: &str) -> String {
    match (tag(xml, "Code"), tag(xml, "Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => "an error without a code".into(),
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_in_a_listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Bucket>cache</Bucket><Upload><Key>p1/a&amp;b</Key><UploadId>u1</UploadId>
<Initiated>1970-01-01T00:00:01.000Z</Initiated></Upload>
<Upload><Key>p1/c</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>"#;
        assert_eq!(
            parse_uploads(xml),
            [
                Upload {
                    key: "p1/a&b".into(),
                    upload_id: "u1".into(),
                    initiated_ms: Some(1000)
                },
                Upload {
                    key: "p1/c".into(),
                    upload_id: "u2".into(),
                    initiated_ms: None
                }
            ]
        );
    }

    #[test]
    fn entities() {
        assert_eq!(unescape("a&lt;b&gt;&#38;&#x41;&bogus;"), "a<b>&A&bogus;");
        assert_eq!(unescape("tail &amp"), "tail &amp");
    }

    #[test]
    fn errors_read_as_code_and_message() {
        let xml = "<Error><Code>NoSuchKey</Code><Message>Key not found</Message></Error>";
        assert_eq!(xml_error(xml), "NoSuchKey: Key not found");
    }
}
