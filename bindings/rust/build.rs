//! Link libmla: the directory in $MLA_LIB_DIR, else what `pkg-config --libs mla` says.
//! An rpath to that directory is added so that tests and examples run without LD_LIBRARY_PATH.
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MLA_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=build.rs");

    let dirs = match env::var("MLA_LIB_DIR") {
        Ok(dir) if !dir.is_empty() => {
            println!("cargo:rustc-link-lib=dylib=mla");
            vec![dir]
        }
        _ => from_pkg_config(),
    };
    for dir in &dirs {
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // Tests find the C headers and the library they linked against through these.
    println!(
        "cargo:rustc-env=MLA_LINKED_LIB_DIR={}",
        dirs.first().cloned().unwrap_or_default()
    );
}

fn from_pkg_config() -> Vec<String> {
    let program = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(&program).args(["--libs", "mla"]).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!(
            "`{program} --libs mla` failed: {}\nset MLA_LIB_DIR to the directory holding \
             libmla.so, or PKG_CONFIG_PATH to the one holding mla.pc",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run `{program}`: {e}\nset MLA_LIB_DIR to the directory holding libmla.so"
        ),
    };
    let mut dirs = Vec::new();
    let mut linked = false;
    for flag in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            dirs.push(dir.to_string());
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
            linked |= lib == "mla";
        }
    }
    if !linked {
        println!("cargo:rustc-link-lib=dylib=mla");
    }
    dirs
}
