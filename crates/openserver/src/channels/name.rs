//! Channel names: `NAMESPACE:NAME`, a name without `:` in the default namespace, and personal
//! channels `#USER`.

/// Which rules a channel name falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A name without `:`.
    Default,
    /// `NAMESPACE:...`: the namespace.
    Namespace(&'a str),
    /// `#USER`: the user whose sessions alone may subscribe.
    Personal(&'a str),
}

/// Why a name is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or nothing after the `:` or `#`.
    #[error("the channel name is empty")]
    Empty,
    /// Longer than `max_channel_name`.
    #[error("the channel name is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control character or white space.
    #[error("the channel name holds white space or a control character")]
    BadCharacter,
}

/// Splits `name` into its kind, checking its length and characters.
pub fn parse(name: &str, max_len: usize) -> Result<Kind<'_>, NameError> {
    if name.len() > max_len {
        return Err(NameError::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NameError::BadCharacter);
    }
    if let Some(user) = name.strip_prefix('#') {
        return if user.is_empty() {
            Err(NameError::Empty)
        } else {
            Ok(Kind::Personal(user))
        };
    }
    match name.split_once(':') {
        None if name.is_empty() => Err(NameError::Empty),
        None => Ok(Kind::Default),
        Some((ns, rest)) if ns.is_empty() || rest.is_empty() => Err(NameError::Empty),
        Some((ns, _)) => Ok(Kind::Namespace(ns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fall_into_their_kind() {
        assert_eq!(parse("lobby", 255), Ok(Kind::Default));
        assert_eq!(parse("chat:lobby", 255), Ok(Kind::Namespace("chat")));
        assert_eq!(parse("chat:a:b", 255), Ok(Kind::Namespace("chat")));
        assert_eq!(parse("#alice", 255), Ok(Kind::Personal("alice")));
        assert_eq!(parse("", 255), Err(NameError::Empty));
        assert_eq!(parse("#", 255), Err(NameError::Empty));
        assert_eq!(parse("chat:", 255), Err(NameError::Empty));
        assert_eq!(parse(":x", 255), Err(NameError::Empty));
        assert_eq!(parse("a b", 255), Err(NameError::BadCharacter));
        assert_eq!(parse("a\u{0}", 255), Err(NameError::BadCharacter));
        assert_eq!(parse("abcd", 3), Err(NameError::TooLong { len: 4, max: 3 }));
    }
}
