//! Names-only on recipes: the indexer's `resolveRecords`, at the last level with
//! `resolveNamesOnly`, merges each `data.recipe.ingredient[i]` (by then a name) with
//! `data.recipe.ingredient_comment[i]`, and the recipe pages show the merged names
//! ("garlic, minced", "extra virgin olive oil, divided"). Parity needs the same words
//! in the same order, so the rules below follow the indexer's string tests exactly,
//! quirks included (case-sensitive substring tests, words split on single spaces).
//!
//! One deliberate difference: an ingredient or a comment that is not a string is left
//! as it is. The indexer throws on such a comment (`trim` of a number), failing the
//! whole request, and on such an ingredient either throws (`includes` of `null`) or
//! writes `"null, chopped"` / `"[object Object], chopped"`.

use serde_json::Value;

/// The name shown for an ingredient `name` with its `comment`; `None` when the name
/// stays as it is (a blank comment).
///
/// The rules, first match wins:
/// 1. a comment containing `ground`, on a name without it, goes before the name;
/// 2. a comment containing `virgin`, on a name containing `oil`: its words containing
///    `virgin` or `extra` go before the name, the other words after it, following a
///    comma;
/// 3. a comment containing `boneless` or `skinless` goes before the name;
/// 4. any other comment goes after the name, following a comma.
pub fn merge_ingredient(name: &str, comment: &str) -> Option<String> {
    if is_blank(comment) {
        return None;
    }
    let merged = if comment.contains("ground") && !name.contains("ground") {
        format!("{comment} {name}")
    } else if comment.contains("virgin") && name.contains("oil") {
        // Split on single spaces, as JavaScript's `split(' ')`: doubled or trailing
        // spaces make empty words, which count as "other" words.
        let is_grade = |word: &&str| word.contains("virgin") || word.contains("extra");
        let grade: Vec<&str> = comment.split(' ').filter(is_grade).collect();
        let other: Vec<&str> = comment.split(' ').filter(|w| !is_grade(w)).collect();
        let mut merged = format!("{} {name}", grade.join(" "));
        if !other.is_empty() {
            merged.push_str(", ");
            merged.push_str(&other.join(" "));
        }
        merged
    } else if comment.contains("boneless") || comment.contains("skinless") {
        format!("{comment} {name}")
    } else {
        format!("{name}, {comment}")
    };
    Some(merged)
}

/// Blank as JavaScript's `trim()` sees it. Its set differs from Rust's `White_Space`
/// by two characters: it trims the BOM (U+FEFF) and keeps NEL (U+0085).
fn is_blank(comment: &str) -> bool {
    comment
        .chars()
        .all(|c| (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}')
}

/// Merges the ingredient names of `record` with their comments, in place, when its
/// `data.recipe.ingredient` and `data.recipe.ingredient_comment` are both arrays (the
/// indexer's condition). The resolver calls this on a record walked with one level
/// left under `resolveNamesOnly`, after its references became names — where the
/// indexer does it.
///
/// Not charged to the output budget: each merge adds at most the comment and three
/// bytes, and the comments are already in the output (each JSON string item is at
/// least two bytes plus a separator), so a record's growth is bounded by the size of
/// its own `ingredient_comment`.
pub fn merge_ingredient_comments(record: &mut Value) {
    let Some(Value::Object(recipe)) = record.pointer_mut("/data/recipe") else {
        return;
    };
    let Some(Value::Array(comments)) = recipe.get("ingredient_comment") else {
        return;
    };
    // The merged names are computed before the ingredient array is borrowed mutably;
    // `None` keeps an ingredient as it is.
    let merged: Vec<Option<String>> = match recipe.get("ingredient") {
        Some(Value::Array(ingredients)) => ingredients
            .iter()
            .enumerate()
            .map(|(i, ingredient)| match (ingredient, comments.get(i)) {
                (Value::String(name), Some(Value::String(comment))) => {
                    merge_ingredient(name, comment)
                }
                _ => None,
            })
            .collect(),
        _ => return,
    };
    if let Some(Value::Array(ingredients)) = recipe.get_mut("ingredient") {
        for (ingredient, merged) in ingredients.iter_mut().zip(merged) {
            if let Some(merged) = merged {
                *ingredient = Value::String(merged);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_indexer_merge_rules_table() {
        let table: &[(&str, &str, &str)] = &[
            // Any other comment goes after the name, after a comma.
            ("garlic", "minced", "garlic, minced"),
            ("lemon", "juiced", "lemon, juiced"),
            (
                "red onion",
                "halved and thinly sliced",
                "red onion, halved and thinly sliced",
            ),
            // Blank comments leave the name.
            ("salt", "", "salt"),
            ("salt", "   ", "salt"),
            ("salt", "\t\n\u{feff}\u{a0}\u{3000}", "salt"),
            ("salt", "\u{85}", "salt, \u{85}"),
            // `ground` goes before a name without it …
            (
                "black pepper",
                "freshly ground",
                "freshly ground black pepper",
            ),
            ("beef", "lean ground", "lean ground beef"),
            // … and a name that has it falls through to the later rules.
            ("ground beef", "ground", "ground beef, ground"),
            (
                "ground turkey",
                "ground, skinless",
                "ground, skinless ground turkey",
            ),
            // `virgin` on an oil: grade words before, the rest after a comma.
            ("olive oil", "extra virgin", "extra virgin olive oil"),
            (
                "olive oil",
                "extra virgin, divided",
                "extra virgin, olive oil, divided",
            ),
            (
                "olive oil",
                "extra virgin divided",
                "extra virgin olive oil, divided",
            ),
            (
                "olive oil",
                "divided extra-virgin",
                "extra-virgin olive oil, divided",
            ),
            ("coconut oil", "virgin", "virgin coconut oil"),
            // Single-space split, as JavaScript's: empty words are "other" words.
            ("olive oil", "extra virgin ", "extra virgin olive oil, "),
            ("olive oil", "extra  virgin", "extra virgin olive oil, "),
            // `virgin` on something that is not an oil: the default rule.
            ("olives", "extra virgin", "olives, extra virgin"),
            // `boneless` / `skinless` go before the name.
            ("chicken thighs", "boneless", "boneless chicken thighs"),
            (
                "chicken breast",
                "boneless skinless",
                "boneless skinless chicken breast",
            ),
            (
                "salmon",
                "skinless, cut in cubes",
                "skinless, cut in cubes salmon",
            ),
            // Substring tests are case-sensitive, as in the indexer.
            ("beef", "Ground", "beef, Ground"),
            ("olive oil", "Extra Virgin", "olive oil, Extra Virgin"),
            // An unresolved reference is a string like any other.
            ("did:arweave:xyz", "minced", "did:arweave:xyz, minced"),
        ];
        for (name, comment, expected) in table {
            let got = merge_ingredient(name, comment).unwrap_or_else(|| (*name).to_owned());
            assert_eq!(got, *expected, "{name:?} + {comment:?}");
        }
    }

    #[test]
    fn a_recipe_is_merged_item_by_item() {
        let mut record = json!({"data": {"recipe": {
            "ingredient": ["garlic", "olive oil", "salt", "chicken", 7, null, "basil", "thyme"],
            "ingredient_comment": ["minced", "extra virgin, divided", "", "boneless", "chopped", "x", null, 3],
            "instructions": "cook"
        }}});
        merge_ingredient_comments(&mut record);
        assert_eq!(
            record,
            json!({"data": {"recipe": {
                "ingredient": ["garlic, minced", "extra virgin, olive oil, divided", "salt",
                               "boneless chicken", 7, null, "basil", "thyme"],
                "ingredient_comment": ["minced", "extra virgin, divided", "", "boneless", "chopped", "x", null, 3],
                "instructions": "cook"
            }}})
        );
    }

    #[test]
    fn fewer_comments_than_ingredients_leave_the_rest() {
        let mut record = json!({"data": {"recipe": {
            "ingredient": ["garlic", "onion"], "ingredient_comment": ["minced"]
        }}});
        merge_ingredient_comments(&mut record);
        assert_eq!(
            record["data"]["recipe"]["ingredient"],
            json!(["garlic, minced", "onion"])
        );
    }

    #[test]
    fn only_when_both_are_arrays() {
        for recipe in [
            json!({"ingredient": "garlic", "ingredient_comment": ["minced"]}),
            json!({"ingredient": ["garlic"], "ingredient_comment": "minced"}),
            json!({"ingredient": ["garlic"]}),
        ] {
            let mut record = json!({"data": {"recipe": recipe.clone()}});
            merge_ingredient_comments(&mut record);
            assert_eq!(record["data"]["recipe"], recipe);
        }
        let mut not_a_recipe = json!({"data": {"recipe": ["garlic"]}});
        merge_ingredient_comments(&mut not_a_recipe);
        assert_eq!(not_a_recipe, json!({"data": {"recipe": ["garlic"]}}));
        let mut no_data = json!({"oip": {}});
        merge_ingredient_comments(&mut no_data);
        assert_eq!(no_data, json!({"oip": {}}));
    }
}
