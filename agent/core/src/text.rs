//! Quoting caller-supplied values in error messages. An error message travels as a gRPC `grpc-message`
//! header or an HTTP body; echoing a 10 kB function name whole makes a 10 kB header that clients then drop
//! (`RESOURCE_EXHAUSTED "Stream removed"`). Every value a caller sent is quoted through [`quote`], which keeps
//! a bounded prefix and says how long the whole was.

/// Characters of a value [`quote`] keeps.
pub const QUOTE_MAX_CHARS: usize = 64;

/// `value` Debug-quoted (control characters escaped), cut to its first [`QUOTE_MAX_CHARS`] characters with
/// `…(N bytes)` after the quote when it is longer.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &value[..cut], value.len()),
    }
}

/// `value` as it is when it is at most [`QUOTE_MAX_CHARS`] characters without control characters, else
/// [`quote`]d: for values an error message has always shown bare (paths, variable names).
pub fn shown(value: &str) -> std::borrow::Cow<'_, str> {
    if value.chars().count() <= QUOTE_MAX_CHARS && !value.chars().any(char::is_control) {
        value.into()
    } else {
        quote(value).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_long_ones_cut_with_their_length() {
        assert_eq!(quote("hello"), "\"hello\"");
        assert_eq!(quote("a\r\nb"), "\"a\\r\\nb\"");
        let exact = "x".repeat(QUOTE_MAX_CHARS);
        assert_eq!(quote(&exact), format!("\"{exact}\""));
        let long = "y".repeat(10_000);
        let q = quote(&long);
        assert_eq!(
            q,
            format!("\"{}\"…(10000 bytes)", "y".repeat(QUOTE_MAX_CHARS))
        );
        // Cut on a character boundary, never inside a multi-byte character.
        let wide = "é".repeat(100);
        assert_eq!(
            quote(&wide),
            format!("\"{}\"…(200 bytes)", "é".repeat(QUOTE_MAX_CHARS))
        );
        assert_eq!(shown("/no/such"), "/no/such");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert_eq!(shown(&long), q);
    }
}
