//! "Did you mean ...?" suggestions for misspelt names.

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        // Case-insensitive Jaro-Winkler catches both typos and wrong case.
        let score = strsim::jaro_winkler(&lower, &c.to_lowercase());
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.filter(|(s, _)| *s >= 0.8).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn nearest_finds_typo_and_case_slip() {
        let kinds = ["KSampler", "LoadImage", "SaveImage", "ImageScale"];
        assert_eq!(nearest("KSampeler", kinds), Some("KSampler"));
        assert_eq!(nearest("loadimage", kinds), Some("LoadImage"));
    }

    #[test]
    fn nearest_offers_nothing_for_unrelated_names() {
        assert_eq!(nearest("Zebra", ["KSampler", "LoadImage"]), None);
    }
}
