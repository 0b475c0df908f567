//! Tool output the model sees: whole when short, else its head and tail with
//! the count of what was left out, cut at UTF-8 boundaries.

/// Most bytes of one tool's output a model sees.
pub const LIMIT: usize = 16 * 1024;

/// `text` within `limit` bytes.
#[must_use]
pub fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let half = limit / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    let left_out = tail - head;
    format!("{}\n[... {left_out} bytes left out ...]\n{}", &text[..head], &text[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_keeps_head_and_tail_and_never_splits_a_character() {
        assert_eq!(cut("short", 10), "short");
        let text = "é".repeat(1000); // 2 bytes each
        let out = cut(&text, 101);
        assert!(out.starts_with(&"é".repeat(25)) && out.ends_with(&"é".repeat(25)));
        assert!(out.contains("[... 1900 bytes left out ...]"), "{out}");
    }
}
