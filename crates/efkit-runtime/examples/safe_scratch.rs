use efkit_problems::constrained::*;
use efkit_problems::datasets;
use efkit_problems::split::SplitKind;
use efkit_runtime::safe::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ds = &args[1];
    let loss = if args[2] == "hinge" { LossKind::Hinge } else { LossKind::Logistic };
    let tau: f64 = args[3].parse().unwrap();
    let r: f64 = args[4].parse().unwrap();
    let data = datasets::load(ds).unwrap();
    let p = neyman_pearson(&data, 1, SplitKind::Shuffled, 1, loss, tau, NpClass::Negative, Some(r)).unwrap();
    let x0 = vec![0.0; p.dim()];
    println!("f(0), g(0) = {:?}", p.evaluate(&x0));
    let mu: f64 = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(1e-6); let rf = reference_solution(&p, &ReferenceOptions { mu_final: mu, ..Default::default() }).unwrap();
    let nx = rf.x_star.iter().map(|v| v*v).sum::<f64>().sqrt();
    println!("f* = {:.12} lower = {:.12} gap = {:.3e} g* = {:.3e} lambda = {:.6} ||x*|| = {:.4} newton = {} secs = {:.2}", rf.f_star, rf.lower_bound, rf.gap(), rf.g_star, rf.lambda, nx, rf.newton_iterations, rf.seconds);
}
