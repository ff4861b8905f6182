fn main() {
    std::process::exit(spahdmap::cli::main());
}
