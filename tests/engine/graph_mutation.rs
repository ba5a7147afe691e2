//! Property test: mutations of valid graphs (bytes dropped, inserted,
//! swapped; tokens duplicated; text truncated) never panic or hang the
//! reader and validator; each is either valid or reported with positions.

use std::time::Instant;

use nodes::builtin_registry;

/// xorshift64*: a dependency-free, seeded generator so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[u8] = b"(){}[]:,.\"'/*#!rb0123456789-+_eE abcxyz\n\\\xc3\xa9\xff\x00";

fn mutate(src: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if i < v.len() => {
                v.remove(i);
            }
            1 => v.insert(i, ALPHABET[rng.below(ALPHABET.len())]),
            2 if i < v.len() => v[i] = ALPHABET[rng.below(ALPHABET.len())],
            3 => {
                let j = rng.below(v.len() + 1).max(i);
                let chunk = v[i..j.min(i + 40)].to_vec();
                let k = rng.below(v.len() + 1);
                v.splice(k..k, chunk);
            }
            4 => v.truncate(i),
            _ => {
                let j = rng.below(v.len());
                if i < v.len() {
                    v.swap(i, j);
                }
            }
        }
    }
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
    // The graph files (graphs/ also holds folders, such as embeddings/).
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ron"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no example graphs found to mutate");
    v
}

#[test]
fn mutated_graphs_never_panic_and_errors_carry_positions() {
    let reg = builtin_registry();
    let mut rng = Rng(0x5D6_2A9B);
    let (mut valid, mut invalid) = (0, 0);
    let start = Instant::now();
    for seed in seeds() {
        for _ in 0..1500 {
            let m = mutate(&seed, &mut rng);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                graph::parse_graph("m.ron", &m).and_then(|g| graph::validate(g, &reg)).map(|_| ())
            }));
            match result {
                Ok(Ok(())) => valid += 1,
                Ok(Err(errs)) => {
                    invalid += 1;
                    assert!(!errs.0.is_empty());
                    for d in &errs.0 {
                        assert!(!d.message.is_empty());
                        assert_eq!(d.file, "m.ron");
                    }
                }
                Err(_) => panic!("panicked on:\n{}", String::from_utf8_lossy(&m)),
            }
        }
    }
    assert!(invalid > 100, "mutations should mostly break graphs ({valid} valid, {invalid} invalid)");
    // Linear-time reading: thousands of graphs in well under the test timeout.
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

#[test]
fn mutated_graphs_make_check_exit_2_never_crash() {
    let dir = crate::common::temp_dir("mutate-cli");
    let mut rng = Rng(42);
    let seed = &seeds()[0];
    let mut checked = 0;
    for i in 0..25 {
        let m = mutate(seed, &mut rng);
        let reg = builtin_registry();
        let ok = graph::parse_graph("m.ron", &m).and_then(|g| graph::validate(g, &reg)).is_ok();
        let f = dir.join(format!("m{i}.ron"));
        std::fs::write(&f, &m).unwrap();
        let o = crate::common::sdgraph_command().arg("check").arg(&f).output().unwrap();
        let want = if ok { 0 } else { 2 };
        assert_eq!(o.status.code(), Some(want), "{}", String::from_utf8_lossy(&o.stderr));
        checked += 1;
    }
    assert_eq!(checked, 25);
}
