//! The library: files found with their tags, words matched as prefixes, typos forgiven.

use den_music::library::Library;
use den_music::track::Source;

fn library(names: &[&str]) -> (tempfile::TempDir, Library) {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, den_standin::voice::tones::tone_wav(440.0, 100)).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not audio").unwrap();
    let library = Library::open(dir.path()).unwrap();
    (dir, library)
}

fn titles(library: &Library, query: &str) -> Vec<String> {
    library.search(query, 5).into_iter().map(|t| t.title).collect()
}

#[test]
fn audio_files_are_indexed_with_their_length_and_other_files_are_not() {
    let (_dir, library) = library(&["Queen/Bohemian Rhapsody.wav", "Daft Punk - One More Time.wav"]);
    assert_eq!(library.len(), 2);
    let found = library.search("bohemian", 1);
    assert_eq!(found[0].title, "Bohemian Rhapsody");
    assert_eq!(found[0].duration_ms, Some(100));
    assert_eq!(found[0].source, Source::File { path: "Queen/Bohemian Rhapsody.wav".into() });
    assert!(library.path_of("Queen/Bohemian Rhapsody.wav").is_some());
    assert!(library.path_of("../etc/passwd").is_none(), "nothing outside the library");
}

#[test]
fn words_match_as_prefixes_in_any_order_and_folders_count() {
    let (_dir, library) =
        library(&["Queen/Bohemian Rhapsody.wav", "Daft Punk - One More Time.wav", "Queen/Radio Ga Ga.wav"]);
    assert_eq!(titles(&library, "bohem rhaps"), ["Bohemian Rhapsody"]);
    assert_eq!(titles(&library, "time one"), ["Daft Punk - One More Time"]);
    let mut queen = titles(&library, "queen");
    queen.sort();
    assert_eq!(queen, ["Bohemian Rhapsody", "Radio Ga Ga"], "the folder's name is searched too");
}

#[test]
fn a_word_with_a_typo_still_finds_the_track() {
    let (_dir, library) = library(&["Queen/Bohemian Rhapsody.wav", "Daft Punk - One More Time.wav"]);
    assert_eq!(titles(&library, "bohemain")[0], "Bohemian Rhapsody");
    assert_eq!(titles(&library, "daftpunk")[0], "Daft Punk - One More Time");
    assert!(titles(&library, "zzzz").is_empty());
}
