//! Finds mimalloc options by name in the `mimalloc.h` that libmimalloc-sys compiles, so that the
//! replica sets `mi_option_purge_delay` by its name rather than by a position in the C enum that
//! libmimalloc-sys does not export (and that moved between mimalloc v2 and v3).

use std::path::Path;

/// The options `main.rs` sets, by their C names.
const OPTIONS: [&str; 1] = ["mi_option_purge_delay"];

fn main() {
    let include = std::env::var("DEP_MIMALLOC_INCLUDE_DIR").expect("libmimalloc-sys exports its include directory");
    let header_path = Path::new(&include).join("mimalloc.h");
    println!("cargo:rerun-if-changed={}", header_path.display());
    let header = std::fs::read_to_string(&header_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", header_path.display()));
    let numbers = option_numbers(&header);
    let mut constants = String::new();
    for name in OPTIONS {
        let number = numbers
            .iter()
            .find(|(option, _)| option == name)
            .map(|(_, number)| *number)
            .unwrap_or_else(|| panic!("{} declares no {name}", header_path.display()));
        let constant = name.to_uppercase();
        constants.push_str(&format!(
            "/// `{name}` in the mimalloc.h that libmimalloc-sys builds (found by node/build.rs).\n\
             pub const {constant}: libmimalloc_sys::mi_option_t = {number};\n"
        ));
    }
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("mimalloc_options.rs");
    std::fs::write(&out, constants).expect("the generated constants are written");
}

/// Each member of `typedef enum mi_option_e { ... }` with its number: C counts up from 0, or from
/// a member's explicit `= N`; members defined as another member's alias are left out.
fn option_numbers(header: &str) -> Vec<(String, i64)> {
    let start = header.find("typedef enum mi_option_e").expect("mimalloc.h declares enum mi_option_e");
    let body = &header[start..];
    let body = &body[body.find('{').expect("the enum opens") + 1..body.find('}').expect("the enum closes")];
    let mut numbers = Vec::new();
    let mut next = 0i64;
    for line in body.lines() {
        let code = line.split("//").next().unwrap_or_default().trim();
        for member in code.split(',').map(str::trim).filter(|member| !member.is_empty()) {
            let (name, value) = match member.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (member, None),
            };
            match value.map(str::parse::<i64>) {
                None => {
                    numbers.push((name.to_owned(), next));
                    next += 1;
                }
                Some(Ok(number)) => {
                    numbers.push((name.to_owned(), number));
                    next = number + 1;
                }
                // `mi_option_reset_delay = mi_option_purge_delay`: an old name for another member.
                Some(Err(_)) => {}
            }
        }
    }
    numbers
}
