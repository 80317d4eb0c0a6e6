'use strict';
// OIP records shaped as the indexer stores them (FitnessAlly's workouts, exercises,
// equipment, images, recipes and ingredients), deterministic, plus a recipe summary
// function standing in for the indexer's addRecipeNutritionalSummary (same contract:
// (record, recordsInDB) -> a new record with `summaryNutritionalInfo…` added).

const did = (kind, i) => `did:arweave:${kind}${String(i).padStart(6, '0')}-xxxxxxxxxxxxxxxxxxxx`;

function oip(id, recordType) {
  return {
    did: id,
    didTx: id,
    recordType,
    indexedAt: '2025-01-15T09:00:00.000Z',
    ver: '0.8.0',
    creator: { creatorHandle: 'FitnessAlly', didAddress: 'did:arweave:creator', publicKey: 'k'.repeat(64) },
  };
}

const basic = (name, extra = {}) => ({ name, description: `About ${name}`, date: 1736931600, language: 'en', ...extra });

/** Every record Elasticsearch holds, and a page of `workouts` workouts. */
function workoutWorld({ exercises = 60, equipment = 15, workoutCount = 100 } = {}) {
  const records = [];
  for (let e = 0; e < equipment; e++) {
    records.push({ oip: oip(did('img', 10000 + e), 'image'), data: { basic: basic(`Icon ${e}`), image: { webUrl: `https://x/${e}.png`, width: 64 } } });
    records.push({ oip: oip(did('eqp', e), 'fitnessEquipment'), data: { basic: basic(`Equipment ${e}`, { avatar: did('img', 10000 + e) }), fitnessEquipment: { kind: 'free weight' } } });
  }
  for (let x = 0; x < exercises; x++) {
    records.push({ oip: oip(did('img', x), 'image'), data: { basic: basic(`Demo ${x}`), image: { webUrl: `https://x/${x}.gif`, width: 360 } } });
    records.push({
      oip: oip(did('exr', x), 'exercise'),
      data: {
        basic: basic(`Exercise ${x}`, { avatar: did('img', x) }),
        exercise: { instructions: ['Stand', 'Lift', 'Lower'], muscleGroups: ['chest'], equipmentRequired: [did('eqp', x % equipment), did('eqp', (x + 1) % equipment)] },
      },
    });
  }
  const page = [];
  for (let w = 0; w < workoutCount; w++) {
    const list = [];
    for (let k = 0; k < 12; k++) list.push(did('exr', (w * 7 + k) % exercises));
    page.push({
      oip: oip(did('wkt', w), 'workout'),
      data: { basic: basic(`Workout ${w}`), workout: { total_duration_minutes: 30, exercise: list, exercise_amount: list.map(() => 10) } },
    });
  }
  return { records, page };
}

/** Ingredients, recipes (one uses another recipe as an ingredient), a meal plan. */
function recipeWorld() {
  const ingredients = ['olive oil', 'garlic', 'black pepper', 'chicken breast', 'rice'].map((name, i) => ({
    oip: oip(did('ing', i), 'nutritionalInfo'),
    data: { basic: basic(name), nutritionalInfo: { standardAmount: 100, standardUnit: 'g', calories: 100 + i * 50, proteinG: i * 3 } },
  }));
  const sauce = {
    oip: oip(did('rcp', 1), 'recipe'),
    data: {
      basic: basic('Garlic sauce'),
      recipe: { servings: 2, ingredient: [did('ing', 0), did('ing', 1)], ingredient_amount: [20, 10], ingredient_unit: ['g', 'g'], ingredient_comment: ['extra virgin, divided', 'minced'] },
    },
  };
  const dinner = {
    oip: oip(did('rcp', 2), 'recipe'),
    data: {
      basic: basic('Chicken and rice'),
      recipe: {
        servings: 4,
        ingredient: [did('ing', 3), did('ing', 4), did('rcp', 1), did('ing', 2)],
        ingredient_amount: [400, 300, 1, 2],
        ingredient_unit: ['g', 'g', 'unit', 'g'],
        ingredient_comment: ['boneless', '', '', 'freshly ground'],
      },
    },
  };
  const plan = {
    oip: oip(did('pln', 1), 'mealPlan'),
    data: { basic: basic('Week plan'), mealPlan: { meals: [did('rcp', 2), did('rcp', 1), did('rcp', 404)], notes: 'eat well' } },
  };
  return { records: [...ingredients, sauce, dinner], plan, ingredients, sauce, dinner };
}

/** Records that reference each other in a loop, and one that references nothing found. */
function cycleWorld() {
  const a = { oip: oip(did('cyc', 1), 'post'), data: { basic: basic('A'), post: { related: did('cyc', 2), missing: did('gone', 1) } } };
  const b = { oip: oip(did('cyc', 2), 'post'), data: { basic: basic('B'), post: { related: did('cyc', 1) } } };
  return { records: [a, b], a, b };
}

/**
 * A recipe summary with the indexer's contract: a new record with
 * `summaryNutritionalInfo` and `…PerServing` added, computed from the resolved
 * ingredients' nutritionalInfo or, for DIDs, from `recordsInDB` (by didTx).
 */
function testSummary(record, recordsInDB, prefix = 'summary') {
  const recipe = record.data.recipe;
  let calories = 0;
  const names = [];
  recipe.ingredient.forEach((ref, i) => {
    let info = null;
    if (ref && typeof ref === 'object') {
      info = ref.data && ref.data.nutritionalInfo;
      names.push(ref.data && ref.data.basic && ref.data.basic.name);
      if (ref.data && ref.data.summaryNutritionalInfo) info = { calories: ref.data.summaryNutritionalInfo.calories };
    } else if (typeof ref === 'string') {
      const found = (recordsInDB || []).find((r) => r && r.oip && r.oip.didTx === ref);
      info = found && found.data.nutritionalInfo;
      names.push(found ? `db:${found.data.basic.name}` : ref);
    }
    if (info) calories += (info.calories || 0) * (recipe.ingredient_amount[i] || 0);
  });
  const servings = recipe.servings || 1;
  return {
    ...record,
    data: {
      ...record.data,
      [`${prefix}NutritionalInfo`]: { calories, names },
      [`${prefix}NutritionalInfoPerServing`]: { calories: calories / servings },
    },
  };
}

module.exports = { did, oip, workoutWorld, recipeWorld, cycleWorld, testSummary };
