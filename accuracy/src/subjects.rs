//! MMMU's 30 subjects and 6 disciplines, from the official `data_utils.py`
//! (`CAT_SHORT2LONG`, `DOMAIN_CAT2SUB_CAT`).

/// `CAT_SHORT2LONG` in dict order, which is also the evaluation order for `--subject ALL`.
pub const SUBJECTS: [(&str, &str); 30] = [
    ("acc", "Accounting"),
    ("agri", "Agriculture"),
    ("arch", "Architecture_and_Engineering"),
    ("art", "Art"),
    ("art_theory", "Art_Theory"),
    ("bas_med", "Basic_Medical_Science"),
    ("bio", "Biology"),
    ("chem", "Chemistry"),
    ("cli_med", "Clinical_Medicine"),
    ("cs", "Computer_Science"),
    ("design", "Design"),
    ("diag_med", "Diagnostics_and_Laboratory_Medicine"),
    ("econ", "Economics"),
    ("elec", "Electronics"),
    ("ep", "Energy_and_Power"),
    ("fin", "Finance"),
    ("geo", "Geography"),
    ("his", "History"),
    ("liter", "Literature"),
    ("manage", "Manage"),
    ("mark", "Marketing"),
    ("mate", "Materials"),
    ("math", "Math"),
    ("mech", "Mechanical_Engineering"),
    ("music", "Music"),
    ("phar", "Pharmacy"),
    ("phys", "Physics"),
    ("psy", "Psychology"),
    ("pub_health", "Public_Health"),
    ("socio", "Sociology"),
];

/// `DOMAIN_CAT2SUB_CAT` in dict order.
pub const DISCIPLINES: [(&str, &[&str]); 6] = [
    ("Art and Design", &["Art", "Art_Theory", "Design", "Music"]),
    (
        "Business",
        &["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    ),
    (
        "Science",
        &["Biology", "Chemistry", "Geography", "Math", "Physics"],
    ),
    (
        "Health and Medicine",
        &[
            "Basic_Medical_Science",
            "Clinical_Medicine",
            "Diagnostics_and_Laboratory_Medicine",
            "Pharmacy",
            "Public_Health",
        ],
    ),
    (
        "Humanities and Social Science",
        &["History", "Literature", "Sociology", "Psychology"],
    ),
    (
        "Tech and Engineering",
        &[
            "Agriculture",
            "Architecture_and_Engineering",
            "Computer_Science",
            "Electronics",
            "Energy_and_Power",
            "Materials",
            "Mechanical_Engineering",
        ],
    ),
];

/// The long name for a long or short subject name (`"art_theory"` or `"Art_Theory"`).
pub fn resolve(name: &str) -> Option<&'static str> {
    SUBJECTS
        .iter()
        .find(|(s, l)| *s == name || *l == name)
        .map(|(_, l)| *l)
}

/// Position in the evaluation order; subjects outside MMMU sort after all of them.
pub fn rank(subject: &str) -> usize {
    SUBJECTS
        .iter()
        .position(|(_, l)| *l == subject)
        .unwrap_or(SUBJECTS.len())
}

/// Sort key for the evaluation order: MMMU subjects by rank, others after them by name.
pub fn order_key(subject: &str) -> (usize, String) {
    let r = rank(subject);
    (
        r,
        if r == SUBJECTS.len() {
            subject.to_owned()
        } else {
            String::new()
        },
    )
}

/// The discipline of a subject (`None` for subjects outside MMMU).
pub fn discipline(subject: &str) -> Option<&'static str> {
    DISCIPLINES
        .iter()
        .find(|(_, subs)| subs.contains(&subject))
        .map(|(d, _)| *d)
}

/// The subject encoded in an item id, as `main_eval_only.py` recovers it:
/// `"_".join(id.split("_")[1:-1])` (`validation_Art_Theory_12` → `Art_Theory`). Empty when the id
/// has fewer than three parts.
pub fn subject_from_id(id: &str) -> String {
    let parts: Vec<&str> = id.split('_').collect();
    if parts.len() < 3 {
        return String::new();
    }
    parts[1..parts.len() - 1].join("_")
}

/// The split encoded in an item id (`validation_Art_1` → `validation`).
pub fn split_from_id(id: &str) -> &str {
    id.split('_').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        // Every subject has exactly one discipline, and short names sort like the dict.
        for (_, long) in SUBJECTS {
            assert!(discipline(long).is_some(), "{long}");
        }
        let n: usize = DISCIPLINES.iter().map(|(_, s)| s.len()).sum();
        assert_eq!(n, 30);
        assert!(SUBJECTS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(resolve("pub_health"), Some("Public_Health"));
        assert_eq!(resolve("Math"), Some("Math"));
        assert_eq!(resolve("math2"), None);
        assert_eq!(subject_from_id("validation_Art_Theory_12"), "Art_Theory");
        assert_eq!(
            subject_from_id("dev_Diagnostics_and_Laboratory_Medicine_3"),
            "Diagnostics_and_Laboratory_Medicine"
        );
        assert_eq!(subject_from_id("x_1"), "");
        assert_eq!(split_from_id("validation_Art_1"), "validation");
        assert!(rank("Accounting") < rank("Sociology") && rank("Custom") == 30);
    }
}
