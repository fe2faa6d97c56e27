//! The Cityscapes label definitions, as in cityscapesScripts `helpers/labels.py`:
//! 34 label ids (plus `license plate`, id -1), of which 19 are evaluated as train ids
//! 0..=18; every other label maps to the ignore value 255.

/// Train id of labels that are not evaluated.
pub const IGNORE_TRAIN_ID: u8 = 255;
/// Number of evaluated classes.
pub const NUM_TRAIN_IDS: usize = 19;

/// One row of the cityscapesScripts label table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CityscapesLabel {
    pub name: &'static str,
    pub id: i32,
    /// 0..=18, or 255 (ignored) / -1 (license plate) as in `labels.py`.
    pub train_id: i32,
    pub category: &'static str,
    pub cat_id: u8,
    pub has_instances: bool,
    pub ignore_in_eval: bool,
    pub color: [u8; 3],
}

// A positional constructor keeps the table readable next to `labels.py`.
#[allow(clippy::too_many_arguments)]
const fn l(
    name: &'static str,
    id: i32,
    train_id: i32,
    category: &'static str,
    cat_id: u8,
    has_instances: bool,
    ignore_in_eval: bool,
    color: [u8; 3],
) -> CityscapesLabel {
    CityscapesLabel {
        name,
        id,
        train_id,
        category,
        cat_id,
        has_instances,
        ignore_in_eval,
        color,
    }
}

/// The full table, in the order of `labels.py`.
pub const LABELS: [CityscapesLabel; 35] = [
    l("unlabeled", 0, 255, "void", 0, false, true, [0, 0, 0]),
    l("ego vehicle", 1, 255, "void", 0, false, true, [0, 0, 0]),
    l(
        "rectification border",
        2,
        255,
        "void",
        0,
        false,
        true,
        [0, 0, 0],
    ),
    l("out of roi", 3, 255, "void", 0, false, true, [0, 0, 0]),
    l("static", 4, 255, "void", 0, false, true, [0, 0, 0]),
    l("dynamic", 5, 255, "void", 0, false, true, [111, 74, 0]),
    l("ground", 6, 255, "void", 0, false, true, [81, 0, 81]),
    l("road", 7, 0, "flat", 1, false, false, [128, 64, 128]),
    l("sidewalk", 8, 1, "flat", 1, false, false, [244, 35, 232]),
    l("parking", 9, 255, "flat", 1, false, true, [250, 170, 160]),
    l(
        "rail track",
        10,
        255,
        "flat",
        1,
        false,
        true,
        [230, 150, 140],
    ),
    l(
        "building",
        11,
        2,
        "construction",
        2,
        false,
        false,
        [70, 70, 70],
    ),
    l(
        "wall",
        12,
        3,
        "construction",
        2,
        false,
        false,
        [102, 102, 156],
    ),
    l(
        "fence",
        13,
        4,
        "construction",
        2,
        false,
        false,
        [190, 153, 153],
    ),
    l(
        "guard rail",
        14,
        255,
        "construction",
        2,
        false,
        true,
        [180, 165, 180],
    ),
    l(
        "bridge",
        15,
        255,
        "construction",
        2,
        false,
        true,
        [150, 100, 100],
    ),
    l(
        "tunnel",
        16,
        255,
        "construction",
        2,
        false,
        true,
        [150, 120, 90],
    ),
    l("pole", 17, 5, "object", 3, false, false, [153, 153, 153]),
    l(
        "polegroup",
        18,
        255,
        "object",
        3,
        false,
        true,
        [153, 153, 153],
    ),
    l(
        "traffic light",
        19,
        6,
        "object",
        3,
        false,
        false,
        [250, 170, 30],
    ),
    l(
        "traffic sign",
        20,
        7,
        "object",
        3,
        false,
        false,
        [220, 220, 0],
    ),
    l(
        "vegetation",
        21,
        8,
        "nature",
        4,
        false,
        false,
        [107, 142, 35],
    ),
    l("terrain", 22, 9, "nature", 4, false, false, [152, 251, 152]),
    l("sky", 23, 10, "sky", 5, false, false, [70, 130, 180]),
    l("person", 24, 11, "human", 6, true, false, [220, 20, 60]),
    l("rider", 25, 12, "human", 6, true, false, [255, 0, 0]),
    l("car", 26, 13, "vehicle", 7, true, false, [0, 0, 142]),
    l("truck", 27, 14, "vehicle", 7, true, false, [0, 0, 70]),
    l("bus", 28, 15, "vehicle", 7, true, false, [0, 60, 100]),
    l("caravan", 29, 255, "vehicle", 7, true, true, [0, 0, 90]),
    l("trailer", 30, 255, "vehicle", 7, true, true, [0, 0, 110]),
    l("train", 31, 16, "vehicle", 7, true, false, [0, 80, 100]),
    l("motorcycle", 32, 17, "vehicle", 7, true, false, [0, 0, 230]),
    l("bicycle", 33, 18, "vehicle", 7, true, false, [119, 11, 32]),
    l(
        "license plate",
        -1,
        -1,
        "vehicle",
        7,
        false,
        true,
        [0, 0, 142],
    ),
];

/// Train id (0..=18) for a label id, 255 for ignored or unknown ids.
pub fn label_id_to_train_id(id: i32) -> u8 {
    LABELS
        .iter()
        .find(|l| l.id == id)
        .and_then(|l| u8::try_from(l.train_id).ok())
        .unwrap_or(IGNORE_TRAIN_ID)
}

/// The 256-entry lookup table from label id (as stored in `*_labelIds.png`) to train id.
pub fn label_id_lut() -> [u8; 256] {
    let mut lut = [IGNORE_TRAIN_ID; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = label_id_to_train_id(i as i32);
    }
    lut
}

/// The 19 evaluated classes in train-id order (name, colour).
pub fn train_classes() -> Vec<&'static CityscapesLabel> {
    (0..NUM_TRAIN_IDS as i32)
        .map(|t| {
            LABELS
                .iter()
                .find(|l| l.train_id == t)
                .expect("every train id 0..=18 has a label")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nineteen_train_ids_in_order() {
        let c = train_classes();
        assert_eq!(c.len(), 19);
        assert_eq!(c[0].name, "road");
        assert_eq!(c[13].name, "car");
        assert_eq!(c[13].color, [0, 0, 142]);
        assert_eq!(c[18].name, "bicycle");
        assert!(c.iter().all(|l| !l.ignore_in_eval));
    }

    #[test]
    fn label_ids_map_like_labels_py() {
        assert_eq!(label_id_to_train_id(7), 0);
        assert_eq!(label_id_to_train_id(26), 13);
        assert_eq!(label_id_to_train_id(9), 255);
        assert_eq!(label_id_to_train_id(-1), 255);
        assert_eq!(label_id_to_train_id(200), 255);
        let lut = label_id_lut();
        assert_eq!(lut[33], 18);
        assert_eq!(lut.iter().filter(|&&t| t != 255).count(), 19);
    }
}
