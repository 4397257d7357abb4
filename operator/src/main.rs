fn main() {
    eprintln!("policyserve-operator: the controller is not built yet");
    std::process::exit(2);
}
