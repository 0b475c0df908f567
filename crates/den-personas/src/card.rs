//! Character Card V2 and V3, in JSON and in PNG (`chara` / `ccv3` text
//! chunks holding base64 JSON), to and from den personas.
//!
//! den's own fields live under `data.extensions.den`; every other field of an
//! imported card is kept (den stores the card beside the persona file) and
//! written back on export, so a round trip loses nothing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::persona::{MemoryTrigger, Persona};

/// Largest card file den reads.
pub const MAX_CARD_BYTES: usize = 20 << 20;

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Card spec versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `chara_card_v2`.
    V2,
    /// `chara_card_v3`.
    V3,
}

/// Why a card could not be read.
#[derive(Debug, thiserror::Error)]
#[error("character card: {0}")]
pub struct CardError(String);

fn err(message: impl Into<String>) -> CardError {
    CardError(message.into())
}

/// A card read into a persona.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The persona.
    pub persona: Persona,
    /// The whole card, every field kept.
    pub card: Value,
    /// Its version.
    pub version: Version,
    /// The PNG it came in, if it did (its image is reused on export).
    pub png: Option<Vec<u8>>,
    /// Fields the card tried to set that only the operator may (owner,
    /// token variable, provider, model): ignored, named here to tell.
    pub ignored: Vec<&'static str>,
}

/// Clears what a card must not decide: who owns the persona (Higher Self
/// powers), which bot token it uses, and which provider and model it costs.
/// Those come from the operator (`den persona import --owner ...`). Returns
/// the names of the fields the card had set.
fn operator_fields_cleared(persona: &mut Persona) -> Vec<&'static str> {
    let mut ignored = Vec::new();
    if persona.owner.take().is_some() {
        ignored.push("owner");
    }
    if persona.token_env.take().is_some() {
        ignored.push("token_env");
    }
    if persona.provider.take().is_some() {
        ignored.push("provider");
    }
    if persona.model.take().is_some() {
        ignored.push("model");
    }
    ignored
}

/// Reads a card from JSON or PNG bytes.
pub fn import(bytes: &[u8]) -> Result<Imported, CardError> {
    if bytes.len() > MAX_CARD_BYTES {
        return Err(err(format!("{} bytes is over the {MAX_CARD_BYTES}-byte limit", bytes.len())));
    }
    let (card, png) = if bytes.starts_with(PNG_SIGNATURE) {
        (card_from_png(bytes)?, Some(bytes.to_vec()))
    } else {
        (serde_json::from_slice::<Value>(bytes).map_err(|e| err(format!("not JSON or PNG: {e}")))?, None)
    };
    let version = match card["spec"].as_str() {
        Some("chara_card_v3") => Version::V3,
        Some("chara_card_v2") => Version::V2,
        Some(other) => return Err(err(format!("unknown spec {other:?}"))),
        None => return Err(err("no \"spec\": not a V2 or V3 card")),
    };
    let data = card["data"].as_object().ok_or_else(|| err("no \"data\" object"))?;
    let mut persona = match data.get("extensions").and_then(|e| e.get("den")) {
        Some(den) => {
            serde_json::from_value::<Persona>(den.clone()).map_err(|e| err(format!("data.extensions.den: {e}")))?
        }
        None => persona_from_card(data)?,
    };
    let ignored = operator_fields_cleared(&mut persona);
    persona.validate().map_err(|e| err(format!("as a den persona: {e}")))?;
    Ok(Imported { persona, card, version, png, ignored })
}

fn text(data: &Map<String, Value>, key: &str) -> String {
    data.get(key).and_then(Value::as_str).unwrap_or_default().trim().to_owned()
}

/// An id from a name: lowercase letters, digits and dashes.
#[must_use]
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.trim_end_matches('-').chars().take(32).collect();
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() { "persona".to_owned() } else { out }
}

/// Maps a card without den's extension: description and scenario describe,
/// personality gives traits, the lorebook gives memory triggers.
fn persona_from_card(data: &Map<String, Value>) -> Result<Persona, CardError> {
    let name = text(data, "name");
    if name.is_empty() {
        return Err(err("data.name is empty"));
    }
    let mut description = text(data, "description");
    let scenario = text(data, "scenario");
    if !scenario.is_empty() {
        description = format!("{description}\n{scenario}").trim().to_owned();
    }
    let traits: Vec<String> = text(data, "personality")
        .split([',', ';', '\n'])
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .take(12)
        .collect();
    let mut triggers = Vec::new();
    let entries = data.get("character_book").and_then(|b| b["entries"].as_array()).cloned().unwrap_or_default();
    for e in entries.iter().filter(|e| e["enabled"].as_bool().unwrap_or(true)).take(20) {
        let keys: Vec<String> =
            e["keys"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
        let recall = e["content"].as_str().unwrap_or_default().trim().to_owned();
        if keys.is_empty() || recall.is_empty() {
            continue;
        }
        let trigger = if e["use_regex"].as_bool() == Some(true) && keys.len() == 1 {
            MemoryTrigger { keywords: vec![], regex: Some(keys[0].clone()), recall }
        } else {
            MemoryTrigger { keywords: keys, regex: None, recall }
        };
        triggers.push(trigger);
    }
    let talkativeness = data
        .get("extensions")
        .and_then(|e| e.get("talkativeness"))
        .and_then(|t| t.as_f64().or_else(|| t.as_str().and_then(|s| s.parse().ok())))
        .filter(|t| (0.0..=1.0).contains(t))
        .unwrap_or(0.3);
    let creator = text(data, "creator");
    let nickname = Some(text(data, "nickname")).filter(|n| !n.is_empty() && n.chars().count() <= 32);
    let text = format!(
        "id = {:?}\nname = {:?}\nmodelled_on = {:?}\n",
        slug(&name),
        name.chars().take(80).collect::<String>(),
        if creator.is_empty() { "a character card".to_owned() } else { format!("a character card by {creator}") }
    );
    let mut p: Persona = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    p.nickname = nickname;
    p.description = description;
    p.traits = traits;
    p.memory_triggers = triggers;
    p.talkativeness = talkativeness;
    Ok(p)
}

/// The card for `persona`: `original` (an imported card) with den's fields
/// written over it, or a new card.
#[must_use]
pub fn export(persona: &Persona, original: Option<&Value>, version: Version) -> Value {
    let mut card = original.cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let (spec, spec_version) = match version {
        Version::V2 => ("chara_card_v2", "2.0"),
        Version::V3 => ("chara_card_v3", "3.0"),
    };
    card["spec"] = spec.into();
    card["spec_version"] = spec_version.into();
    if !card["data"].is_object() {
        card["data"] = json!({});
    }
    let data = &mut card["data"];
    let defaults = [
        ("scenario", json!("")),
        ("first_mes", json!("")),
        ("mes_example", json!("")),
        ("creator_notes", json!("")),
        ("system_prompt", json!("")),
        ("post_history_instructions", json!("")),
        ("alternate_greetings", json!([])),
        ("tags", json!([])),
        ("creator", json!("")),
        ("character_version", json!("")),
        ("extensions", json!({})),
    ];
    for (k, v) in defaults {
        if data.get(k).is_none() {
            data[k] = v;
        }
    }
    if version == Version::V3 && data.get("group_only_greetings").is_none() {
        data["group_only_greetings"] = json!([]);
    }
    data["name"] = persona.name.clone().into();
    data["description"] = persona.description.clone().into();
    data["personality"] = persona.traits.join(", ").into();
    if let Some(n) = &persona.nickname
        && version == Version::V3
    {
        data["nickname"] = n.clone().into();
    }
    if data.get("character_book").is_none() && !persona.memory_triggers.is_empty() {
        let entries: Vec<Value> = persona
            .memory_triggers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (keys, regex) = match &t.regex {
                    Some(r) => (vec![r.clone()], true),
                    None => (t.keywords.clone(), false),
                };
                let mut e = json!({"keys": keys, "content": t.recall, "extensions": {}, "enabled": true,
                    "insertion_order": i, "id": i});
                if version == Version::V3 {
                    e["use_regex"] = regex.into();
                }
                e
            })
            .collect();
        data["character_book"] = json!({"entries": entries, "extensions": {}});
    }
    if !data["extensions"].is_object() {
        data["extensions"] = json!({});
    }
    // What only the operator decides stays on this server: a card carries the character, not who runs it.
    let mut shared = persona.clone();
    operator_fields_cleared(&mut shared);
    data["extensions"]["den"] = serde_json::to_value(&shared).unwrap_or(Value::Null);
    card
}

/// A PNG carrying `card`: `image` (a PNG, its old card chunks dropped) or a
/// 1×1 placeholder. V3 cards carry a V2 `chara` chunk too, for older readers.
pub fn export_png(card: &Value, image: Option<&[u8]>) -> Result<Vec<u8>, CardError> {
    let placeholder;
    let image = match image {
        Some(i) => i,
        None => {
            placeholder = placeholder_png();
            &placeholder
        }
    };
    let chunks = chunks(image)?;
    let mut texts = Vec::new();
    if card["spec"] == "chara_card_v3" {
        texts.push(text_chunk("ccv3", &B64.encode(card.to_string())));
        let mut v2 = card.clone();
        v2["spec"] = "chara_card_v2".into();
        v2["spec_version"] = "2.0".into();
        texts.push(text_chunk("chara", &B64.encode(v2.to_string())));
    } else {
        texts.push(text_chunk("chara", &B64.encode(card.to_string())));
    }
    let mut out = PNG_SIGNATURE.to_vec();
    for (kind, data) in chunks {
        let is_card = kind == *b"tEXt" && (data.starts_with(b"chara\0") || data.starts_with(b"ccv3\0"));
        if is_card {
            continue;
        }
        if kind == *b"IEND" {
            for t in &texts {
                out.extend_from_slice(t);
            }
        }
        out.extend_from_slice(&chunk(&kind, data));
    }
    Ok(out)
}

/// The PNG's chunks: (type, data). Lengths are checked; CRCs are not
/// (readers of cards commonly ignore them).
/// A PNG chunk: its type and data.
type Chunk<'a> = ([u8; 4], &'a [u8]);

fn chunks(png: &[u8]) -> Result<Vec<Chunk<'_>>, CardError> {
    if !png.starts_with(PNG_SIGNATURE) {
        return Err(err("not a PNG"));
    }
    let mut out = Vec::new();
    let mut at = PNG_SIGNATURE.len();
    while at < png.len() {
        let header = png.get(at..at + 8).ok_or_else(|| err("PNG chunk header cut short"))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = [header[4], header[5], header[6], header[7]];
        let data = png.get(at + 8..at + 8 + len).ok_or_else(|| err("PNG chunk cut short"))?;
        png.get(at + 8 + len..at + 12 + len).ok_or_else(|| err("PNG chunk CRC missing"))?;
        out.push((kind, data));
        at += 12 + len;
        if kind == *b"IEND" {
            break;
        }
    }
    if out.last().is_none_or(|(k, _)| k != b"IEND") {
        return Err(err("PNG without IEND"));
    }
    Ok(out)
}

fn card_from_png(png: &[u8]) -> Result<Value, CardError> {
    let mut v2 = None;
    let mut v3 = None;
    for (kind, data) in chunks(png)? {
        if kind != *b"tEXt" {
            continue;
        }
        let Some(nul) = data.iter().position(|b| *b == 0) else { continue };
        let (key, value) = (&data[..nul], &data[nul + 1..]);
        match key {
            b"chara" => v2 = Some(value),
            b"ccv3" => v3 = Some(value),
            _ => {}
        }
    }
    // Readers prefer V3 when both are there.
    let raw = v3.or(v2).ok_or_else(|| err("the PNG has no chara or ccv3 text chunk"))?;
    let cleaned: Vec<u8> = raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let json = B64.decode(&cleaned).map_err(|e| err(format!("card chunk is not base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| err(format!("card chunk is not JSON: {e}")))
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

fn text_chunk(key: &str, text: &str) -> Vec<u8> {
    let mut data = key.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(text.as_bytes());
    chunk(b"tEXt", &data)
}

/// A 1×1 transparent PNG: IHDR, one stored-deflate IDAT, IEND.
fn placeholder_png() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
    let raw = [0u8, 0, 0, 0, 0]; // filter byte, then one transparent pixel
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for byte in raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = PNG_SIGNATURE.to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &zlib));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_card() -> Value {
        json!({
            "spec": "chara_card_v2",
            "spec_version": "2.0",
            "top_level_unknown": {"kept": true},
            "data": {
                "name": "Captain Marrow",
                "description": "A retired sea captain who grows vegetables.",
                "personality": "gruff, sentimental, boastful",
                "scenario": "Runs the allotment next door.",
                "first_mes": "Ahoy, {{user}}.",
                "mes_example": "<START>\n{{char}}: Arr.",
                "creator_notes": "",
                "system_prompt": "",
                "post_history_instructions": "",
                "alternate_greetings": ["Arr."],
                "tags": ["sea", "garden"],
                "creator": "someone",
                "character_version": "1.2",
                "unknown_data_field": [1, 2, 3],
                "extensions": {"talkativeness": "0.7", "depth_prompt": {"depth": 4}},
                "character_book": {"entries": [
                    {"keys": ["storm", "gale"], "content": "Lost his boat in the storm of '89.", "extensions": {},
                     "enabled": true, "insertion_order": 0},
                    {"keys": ["off"], "content": "disabled", "extensions": {}, "enabled": false, "insertion_order": 1}
                ], "extensions": {}}
            }
        })
    }

    #[test]
    fn a_v2_card_becomes_a_persona() {
        let imported = import(v2_card().to_string().as_bytes()).unwrap();
        let p = &imported.persona;
        assert_eq!((p.id.as_str(), p.name.as_str()), ("captain-marrow", "Captain Marrow"));
        assert_eq!(p.traits, ["gruff", "sentimental", "boastful"]);
        assert!(p.description.ends_with("Runs the allotment next door."));
        assert_eq!(p.talkativeness, 0.7);
        assert_eq!(p.memory_triggers.len(), 1, "disabled lorebook entries are skipped");
        assert_eq!(p.triggered_recalls("what a gale"), ["Lost his boat in the storm of '89."]);
        assert_eq!(imported.version, Version::V2);
    }

    #[test]
    fn json_round_trips_keep_unknown_fields_and_dens_own() {
        let imported = import(v2_card().to_string().as_bytes()).unwrap();
        let mut p = imported.persona.clone();
        p.roast_style = "nautical insults".into();
        let out = export(&p, Some(&imported.card), Version::V2);
        assert_eq!(out["top_level_unknown"], json!({"kept": true}));
        assert_eq!(out["data"]["unknown_data_field"], json!([1, 2, 3]));
        assert_eq!(out["data"]["extensions"]["depth_prompt"], json!({"depth": 4}));
        assert_eq!(out["data"]["mes_example"], "<START>\n{{char}}: Arr.");
        assert_eq!(out["data"]["character_book"], v2_card()["data"]["character_book"], "the lorebook as it was");
        let again = import(out.to_string().as_bytes()).unwrap();
        assert_eq!(again.persona, p, "den's fields come back from data.extensions.den");
    }

    #[test]
    fn a_card_never_sets_the_owner_the_bot_token_the_provider_or_the_model() {
        let mut card = v2_card();
        let mut den: Persona = import(card.to_string().as_bytes()).unwrap().persona;
        den.owner = Some(42);
        den.token_env = Some("DISCORD_TOKEN".into());
        den.provider = Some("expensive".into());
        den.model = Some("claude-opus".into());
        card["data"]["extensions"]["den"] = serde_json::to_value(&den).unwrap();
        let imported = import(card.to_string().as_bytes()).unwrap();
        assert_eq!(imported.ignored, ["owner", "token_env", "provider", "model"]);
        let p = &imported.persona;
        assert_eq!((p.owner, &p.token_env, &p.provider, &p.model), (None, &None, &None, &None));
        // Nor does den put them in the cards it exports.
        let out = export(&den, None, Version::V3);
        let shared = &out["data"]["extensions"]["den"];
        assert!(shared["owner"].is_null() && shared["token_env"].is_null() && shared["model"].is_null(), "{shared}");
    }

    #[test]
    fn png_round_trips_in_v2_and_v3_and_readers_prefer_ccv3() {
        let imported = import(v2_card().to_string().as_bytes()).unwrap();
        for version in [Version::V2, Version::V3] {
            let card = export(&imported.persona, Some(&imported.card), version);
            let png = export_png(&card, None).unwrap();
            assert!(png.starts_with(PNG_SIGNATURE));
            let back = import(&png).unwrap();
            assert_eq!(back.version, version);
            assert_eq!(back.card, card, "{version:?}: the card comes back whole");
            assert_eq!(back.persona, imported.persona);
            // Re-exporting into the same image replaces the card chunks instead of adding more.
            let png2 = export_png(&back.card, back.png.as_deref()).unwrap();
            let count = |needle: &[u8]| png2.windows(needle.len()).filter(|w| *w == needle).count();
            assert_eq!(count(b"tEXtchara\0"), 1);
            assert_eq!(count(b"tEXtccv3\0"), usize::from(version == Version::V3));
            if version == Version::V3 {
                assert_eq!(back.card["data"]["group_only_greetings"], json!([]));
            }
        }
    }

    #[test]
    fn broken_cards_get_clear_errors_not_panics() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "not JSON or PNG"),
            (br#"{"spec":"chara_card_v9","data":{}}"#.to_vec(), "unknown spec"),
            (br#"{"data":{"name":"x"}}"#.to_vec(), "no \"spec\""),
            (br#"{"spec":"chara_card_v2","data":{"name":""}}"#.to_vec(), "data.name is empty"),
            (PNG_SIGNATURE.to_vec(), "PNG without IEND"),
            ([PNG_SIGNATURE.as_slice(), &[0, 0, 1, 0, b't', b'E']].concat(), "cut short"),
            (placeholder_png(), "no chara or ccv3"),
        ];
        for (bytes, expected) in cases {
            let e = import(&bytes).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected}: {e}");
        }
        let bad_den = json!({"spec": "chara_card_v2", "data": {"name": "x", "extensions": {"den": {"id": "Bad Id!"}}}});
        assert!(import(bad_den.to_string().as_bytes()).unwrap_err().to_string().contains("extensions.den"));
    }

    #[test]
    fn names_become_ids() {
        assert_eq!(slug("Sir Reginald  Quill III!"), "sir-reginald-quill-iii");
        assert_eq!(slug("!!!"), "persona");
        let long = slug(&"long name ".repeat(10));
        assert_eq!(long, "long-name-long-name-long-name-lo", "at most 32 characters, valid as an id");
    }
}
