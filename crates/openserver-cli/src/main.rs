// Not wired into a command line yet; the lead replaces this file.
#[allow(dead_code)]
mod cmd;

fn main() {}
