//! Splitting long text into Discord-sized messages.

/// Discord's limit on message content, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// Splits `text` into pieces of at most `max` characters, preferring to break
/// at a paragraph, then a line, then a sentence, then a space, and only as a
/// last resort inside a word. A piece that ends inside a ``` code block closes
/// it and the next piece reopens it with the same language tag, so each piece
/// renders on its own.
#[must_use]
pub fn split_message(text: &str, max: usize) -> Vec<String> {
    let max = max.max(16);
    let mut pieces = Vec::new();
    let mut rest = text.trim_end();
    let mut reopen: Option<String> = None;
    while !rest.is_empty() {
        let prefix = reopen.take().map(|lang| format!("```{lang}\n")).unwrap_or_default();
        // Room for the prefix and a closing fence, should one be needed.
        let budget = max - prefix.chars().count() - 4;
        if prefix.chars().count() + rest.chars().count() <= max {
            pieces.push(format!("{prefix}{rest}"));
            break;
        }
        let cut = best_cut(rest, budget);
        let (head, tail) = rest.split_at(cut);
        let mut piece = format!("{prefix}{}", head.trim_end());
        if let Some(lang) = open_fence(&piece) {
            piece.push_str("\n```");
            reopen = Some(lang);
        }
        pieces.push(piece);
        rest = tail.trim_start_matches([' ', '\n']);
    }
    if pieces.is_empty() {
        pieces.push(String::new());
    }
    pieces
}

/// Byte index at which to cut `text` so the head has at most `budget` characters.
fn best_cut(text: &str, budget: usize) -> usize {
    let limit = text.char_indices().nth(budget).map_or(text.len(), |(i, _)| i);
    let window = &text[..limit];
    // Do not accept a break in the first quarter: it would make tiny pieces.
    let floor = limit / 4;
    for sep in ["\n\n", "\n", ". ", "! ", "? ", " "] {
        if let Some(i) = window.rfind(sep).filter(|&i| i > floor) {
            return i + sep.len().min(1);
        }
    }
    limit
}

/// The language tag of a ``` block left open at the end of `text`, if any.
fn open_fence(text: &str) -> Option<String> {
    let mut open: Option<String> = None;
    for line in text.lines() {
        if let Some(tag) = line.trim_start().strip_prefix("```") {
            open = match open {
                Some(_) => None,
                None => Some(tag.trim().to_owned()),
            };
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_message("hello", 2000), ["hello"]);
    }

    #[test]
    fn every_piece_fits_and_nothing_is_lost() {
        let text: String = (0..400).map(|i| format!("Sentence number {i} is here. ")).collect();
        let pieces = split_message(&text, 2000);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.chars().count() <= 2000));
        let words: Vec<&str> = text.split_whitespace().collect();
        let rejoined: Vec<String> = pieces.iter().flat_map(|p| p.split_whitespace().map(str::to_owned)).collect();
        assert_eq!(rejoined, words);
    }

    #[test]
    fn paragraphs_are_preferred_over_sentences() {
        let a = "a".repeat(1200);
        let text = format!("{a}. More words here.\n\n{}", "b".repeat(1000));
        let pieces = split_message(&text, 2000);
        assert_eq!(pieces[0], format!("{a}. More words here."));
        assert_eq!(pieces[1], "b".repeat(1000));
    }

    #[test]
    fn a_word_longer_than_the_limit_is_cut_by_characters_not_bytes() {
        let text = "é".repeat(4500);
        let pieces = split_message(&text, 2000);
        assert!(pieces.iter().all(|p| p.chars().count() <= 2000));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn a_code_block_cut_in_two_is_closed_and_reopened() {
        let code: String = (0..300).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("Here:\n```rust\n{code}```\nDone.");
        let pieces = split_message(&text, 2000);
        assert!(pieces.len() > 1);
        for p in &pieces {
            assert!(p.chars().count() <= 2000);
            assert_eq!(p.matches("```").count() % 2, 0, "balanced fences in {p:?}");
        }
        assert!(pieces[1].starts_with("```rust\n"));
    }
}
