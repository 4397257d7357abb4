fn main() {
    eprintln!("policyserve-agent: not built yet");
    std::process::exit(2);
}
