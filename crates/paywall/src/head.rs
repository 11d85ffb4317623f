//! HEAD answered as RFC 9110 (section 9.3.2) has it: a GET's fields
//! without its body. HTTP/1's framing drops a body sent anyway; HTTP/2
//! has none that does (the client resets the stream), so whoever writes
//! a body into an answer to HEAD takes it out again, keeping its length.

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, StatusCode};

/// Puts into `headers` the `Content-Length` the GET's answer would carry,
/// for an answer with `status` whose body of `exact` bytes (`None`: not
/// known) is dropped; a `Content-Length` already there is kept.
///
/// A length of 0 is not added: an upstream's answer to HEAD arrives with
/// an empty body whatever its GET would carry (a stream of unknown
/// length, say). Nor is one added for a status that has no content (1xx,
/// 204, 304; RFC 9110, sections 8.6 and 15.4.5). hyper's HTTP/1 server
/// does the same.
pub fn keep_length(status: StatusCode, headers: &mut HeaderMap, exact: Option<u64>) {
    let has_content = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    match exact {
        Some(length) if length > 0 && has_content => {
            headers
                .entry(CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(length));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(status: u16, exact: Option<u64>, given: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(given) = given {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_str(given).unwrap());
        }
        keep_length(StatusCode::from_u16(status).unwrap(), &mut headers, exact);
        headers
            .get(CONTENT_LENGTH)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn a_head_answer_has_a_gets_length_where_known_and_no_invented_zero() {
        assert_eq!(kept(402, Some(2), None).as_deref(), Some("2"));
        assert_eq!(kept(200, Some(0), Some("90")).as_deref(), Some("90"));
        assert_eq!(kept(200, Some(5), Some("90")).as_deref(), Some("90"));
        // An upstream's HEAD answer, or a stream: the length is unknown.
        assert_eq!(kept(200, Some(0), None), None);
        assert_eq!(kept(200, None, None), None);
        for status in [100, 204, 304] {
            assert_eq!(kept(status, Some(1), None), None, "{status}");
        }
    }
}
